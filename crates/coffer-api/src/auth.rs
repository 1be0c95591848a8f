//! S1: registration, login, refresh. argon2id passwords, short-lived HS256 access tokens,
//! refresh tokens rotated on use with reuse detection per family.

use std::time::Duration;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use coffer_store::audit::Audit;
use coffer_store::audit_chain::actions;
use coffer_store::tokens::{RevokeReason, Rotation};
use coffer_store::{Role, StoreError};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::{ApiConfig, PasswordHashing};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Principal, ValidJson};
use crate::limits::ClientIp;
use crate::ApiContext;

const ISSUER: &str = "coffer";
const AUDIENCE: &str = "coffer-api";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    auth_time: i64,
    /// The session: revoking it ends this token too (see [`crate::sessions`]).
    sid: String,
    iat: i64,
    exp: i64,
    iss: String,
    aud: String,
}

/// Issues and verifies tokens. Holds the key; never logs it.
pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_ttl: Duration,
    refresh_ttl: Duration,
    session_lifetime: Duration,
}

impl TokenService {
    pub fn new(config: &ApiConfig) -> Self {
        let secret = config.jwt_secret.expose_secret().as_bytes();
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = 5;
        TokenService {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_ttl: config.access_token_ttl,
            refresh_ttl: config.refresh_token_ttl,
            session_lifetime: config.session_lifetime,
        }
    }

    /// An access token of `session`; it expires with the session at the latest.
    pub fn issue_access(
        &self,
        user_id: &str,
        role: Role,
        auth_time: i64,
        session: &Session,
    ) -> ApiResult<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            auth_time,
            sid: session.id.clone(),
            iat: now,
            exp: (now + self.access_ttl.as_secs() as i64).min(session.expires_at.timestamp()),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
        };
        jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &self.encoding,
        )
        .map_err(|e| ApiError::Internal(format!("token signing failed: {e}")))
    }

    pub fn verify_access(&self, token: &str) -> ApiResult<Principal> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|_| {
            ApiError::Unauthenticated {
                code: "unauthenticated",
            }
        })?;
        Ok(Principal {
            user_id: data.claims.sub,
            role: data.claims.role,
            auth_time: data.claims.auth_time,
            session_id: data.claims.sid,
        })
    }

    pub fn refresh_ttl(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.refresh_ttl).expect("configured TTL fits")
    }

    pub fn session_lifetime(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.session_lifetime).expect("configured lifetime fits")
    }
}

/// The session an access token is issued for.
pub struct Session {
    pub id: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// 256 random bits, URL-safe base64: a refresh token or a stream ticket.
pub(crate) fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn argon2(params: &PasswordHashing) -> Argon2<'static> {
    let params = Params::new(params.memory_kib, params.iterations, params.parallelism, None)
        .expect("password hashing parameters are validated at start");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password with argon2id on the blocking pool (it is deliberately expensive).
pub async fn hash_password(password: SecretString, params: PasswordHashing) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon2(&params)
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| ApiError::Internal(format!("password hashing failed: {e}")))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// Verifies a password. With no stored hash (unknown e-mail) it verifies against a dummy hash
/// made with the same parameters, so the time taken does not tell whether an e-mail exists.
async fn verify_password(password: SecretString, stored: Option<String>, params: PasswordHashing) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    tokio::task::spawn_blocking(move || {
        let stored = stored.unwrap_or_else(|| {
            DUMMY
                .get_or_init(|| {
                    let salt = SaltString::generate(&mut OsRng);
                    argon2(&params)
                        .hash_password(b"no such user", &salt)
                        .map(|h| h.to_string())
                        .unwrap_or_default()
                })
                .clone()
        });
        let Ok(parsed) = PasswordHash::new(&stored) else {
            return false;
        };
        // Parameters come from the stored PHC string, so older hashes keep verifying.
        Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Used to log in; never logged, never returned.
    pub email: String,
    /// 12 to 128 characters.
    #[schema(format = Password)]
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    #[schema(format = Password)]
    pub password: String,
    /// Staff accounts: the 6-digit code of their authenticator app (TOTP); each code works once.
    #[serde(default)]
    #[schema(format = Password)]
    pub totp_code: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    #[schema(format = Password)]
    pub current_password: String,
    /// 12 to 128 characters.
    #[schema(format = Password)]
    pub new_password: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub user_id: String,
    pub access_token: String,
    /// Single use: each refresh returns a new one; presenting a used one revokes the session.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

fn validate_credentials(email: &str, password: &str) -> ApiResult<()> {
    let email_ok = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !email.chars().any(char::is_whitespace);
    if !email_ok {
        return Err(ApiError::invalid_field(
            "invalid_email",
            "email",
            "not a valid e-mail address",
        ));
    }
    let length = password.chars().count();
    if !(12..=128).contains(&length) {
        return Err(ApiError::invalid_field(
            "weak_password",
            "password",
            "the password must have 12 to 128 characters",
        ));
    }
    Ok(())
}

async fn issue_session(
    ctx: &ApiContext,
    user_id: &str,
    role: Role,
    auth_time: i64,
) -> ApiResult<TokenResponse> {
    let refresh_token = new_refresh_token();
    let tokens = ctx.tokens();
    let started = ctx
        .store()
        .start_session(
            user_id,
            &refresh_token,
            auth_time,
            tokens.refresh_ttl(),
            tokens.session_lifetime(),
            Audit::new(user_id, actions::LOGIN),
        )
        .await?;
    let session = Session {
        id: started.id,
        expires_at: started.expires_at,
    };
    token_response(ctx, user_id, role, auth_time, &session, refresh_token)
}

/// A response carrying credentials: never stored by any cache (RFC 6749 §5.1).
pub struct TokenReply(StatusCode, TokenResponse);

impl IntoResponse for TokenReply {
    fn into_response(self) -> Response {
        let no_store = [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::PRAGMA, HeaderValue::from_static("no-cache")),
        ];
        (self.0, no_store, Json(self.1)).into_response()
    }
}

fn token_response(
    ctx: &ApiContext,
    user_id: &str,
    role: Role,
    auth_time: i64,
    session: &Session,
    refresh_token: String,
) -> ApiResult<TokenResponse> {
    let access_token = ctx.tokens().issue_access(user_id, role, auth_time, session)?;
    let expires_in = (session.expires_at.timestamp() - chrono::Utc::now().timestamp()).max(0) as u64;
    Ok(TokenResponse {
        user_id: user_id.to_string(),
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: ctx.config().access_token_ttl.as_secs().min(expires_in),
    })
}

/// Register a user account (role `user`) and start a session.
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = TokenResponse), (status = 400, body = crate::error::Problem),
              (status = 409, description = "email_taken", body = crate::error::Problem),
              (status = 429, body = crate::error::Problem)))]
pub async fn register(
    State(ctx): State<ApiContext>,
    ValidJson(body): ValidJson<RegisterRequest>,
) -> ApiResult<TokenReply> {
    validate_credentials(&body.email, &body.password)?;
    let _slot = ctx.hashing().acquire()?;
    let hash = hash_password(
        SecretString::from(body.password),
        ctx.config().password_hashing.clone(),
    )
    .await?;
    let audit = Audit::new("anonymous", actions::REGISTERED);
    let user = match ctx
        .store()
        .create_user(&body.email, hash, Role::User, audit)
        .await
    {
        Ok(user) => user,
        Err(StoreError::AlreadyExists) => {
            return Err(ApiError::Conflict {
                code: "email_taken",
                detail: "an account with this e-mail exists".into(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let session = issue_session(&ctx, &user.id, user.role, chrono::Utc::now().timestamp()).await?;
    Ok(TokenReply(StatusCode::CREATED, session))
}

/// Log in with e-mail and password; staff accounts also with the current code of their
/// authenticator app (`totp_code`).
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse),
              (status = 401, description = "invalid_credentials; for staff, mfa_required or invalid_mfa_code", body = crate::error::Problem),
              (status = 403, description = "mfa_enrollment_required: a staff account without TOTP", body = crate::error::Problem),
              (status = 429, description = "rate_limited: too many requests from this network, or too many failed logins of this account from it", body = crate::error::Problem),
              (status = 503, description = "retry_later: the bound on concurrent password hashing is reached", body = crate::error::Problem)))]
pub async fn login(
    State(ctx): State<ApiContext>,
    ClientIp(ip): ClientIp,
    ValidJson(body): ValidJson<LoginRequest>,
) -> ApiResult<TokenReply> {
    let user = authenticate(&ctx, ip, &body.email, body.password, body.totp_code.as_deref()).await?;
    let session = issue_session(&ctx, &user.id, user.role, chrono::Utc::now().timestamp()).await?;
    Ok(TokenReply(StatusCode::OK, session))
}

/// Checks a login's password and, for staff, its TOTP code (used once), with the failed-login
/// bound of the account and client network; failures are audited. The API's login and the
/// console's sign-in both go through it.
pub(crate) async fn authenticate(
    ctx: &ApiContext,
    ip: Option<std::net::IpAddr>,
    email: &str,
    password: String,
    totp_code: Option<&str>,
) -> ApiResult<coffer_store::UserDoc> {
    ctx.login_failures().check(email, ip)?;
    let user = ctx.store().user_by_email(email).await?;
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let params = ctx.config().password_hashing.clone();
    let slot = ctx.hashing().acquire()?;
    let verified = verify_password(SecretString::from(password), stored, params).await;
    drop(slot);
    let user = match user {
        Some(user) if verified => user,
        other => {
            ctx.login_failures().failed(email, ip);
            let subject = other.map(|u| u.id).unwrap_or_else(|| "unknown".into());
            ctx.store()
                .audit("anonymous", "auth.login_failed", &subject, Default::default())
                .await?;
            return Err(ApiError::Unauthenticated {
                code: "invalid_credentials",
            });
        }
    };
    if crate::mfa::required_for(user.role) {
        let second = second_factor(ctx, &user, totp_code).await;
        if matches!(
            &second,
            Err(ApiError::Unauthenticated {
                code: "invalid_mfa_code"
            })
        ) {
            ctx.login_failures().failed(email, ip);
        }
        second?;
    }
    ctx.login_failures().succeeded(email, ip);
    Ok(user)
}

/// A staff login's second factor: the current TOTP code, used once.
async fn second_factor(ctx: &ApiContext, user: &coffer_store::UserDoc, code: Option<&str>) -> ApiResult<()> {
    let Some(secret) = user.totp_secret.clone().map(SecretString::from) else {
        return Err(ApiError::ForbiddenBecause {
            code: "mfa_enrollment_required",
            detail: "staff accounts log in with a TOTP code: enroll with `coffer user mfa-enroll`".into(),
        });
    };
    let Some(code) = code else {
        return Err(ApiError::Unauthenticated { code: "mfa_required" });
    };
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let accepted = match crate::mfa::matching_step(&secret, code, now) {
        Some(step) => ctx.store().consume_totp_step(&user.id, step).await?,
        None => false,
    };
    if !accepted {
        ctx.store()
            .audit("anonymous", actions::MFA_FAILED, &user.id, Default::default())
            .await?;
        return Err(ApiError::Unauthenticated {
            code: "invalid_mfa_code",
        });
    }
    Ok(())
}

/// Exchange a refresh token for a new access token and a new refresh token.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse),
              (status = 401, description = "invalid_refresh_token or refresh_token_reused", body = crate::error::Problem)))]
pub async fn refresh(
    State(ctx): State<ApiContext>,
    ValidJson(body): ValidJson<RefreshRequest>,
) -> ApiResult<TokenReply> {
    let successor = new_refresh_token();
    let ttl = ctx.tokens().refresh_ttl();
    match ctx
        .store()
        .rotate_refresh_token(&body.refresh_token, &successor, ttl)
        .await?
    {
        Rotation::Rotated {
            user_id,
            auth_time,
            session_id,
            session_expires_at,
        } => {
            let user = ctx
                .store()
                .user_by_id(&user_id)
                .await?
                .ok_or(ApiError::NotFound)?;
            let session = Session {
                id: session_id,
                expires_at: session_expires_at,
            };
            let session = token_response(&ctx, &user.id, user.role, auth_time, &session, successor)?;
            Ok(TokenReply(StatusCode::OK, session))
        }
        Rotation::ReuseDetected { user_id } => {
            ctx.store()
                .audit(
                    "anonymous",
                    "auth.refresh_reuse_detected",
                    &user_id,
                    Default::default(),
                )
                .await?;
            Err(ApiError::Unauthenticated {
                code: "refresh_token_reused",
            })
        }
        Rotation::Invalid => Err(ApiError::Unauthenticated {
            code: "invalid_refresh_token",
        }),
    }
}

/// End the caller's session: its refresh token and every access token of it stop working (on
/// every replica within `COFFER_SESSION_CHECK_SECONDS`), and its event streams close.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth",
    responses((status = 204, description = "the session is ended"),
              (status = 401, description = "unauthenticated or session_revoked", body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn logout(State(ctx): State<ApiContext>, principal: Principal) -> ApiResult<StatusCode> {
    ctx.store()
        .revoke_session(&principal.session_id, RevokeReason::Logout)
        .await?;
    ctx.sessions().forget(&principal.session_id);
    ctx.store()
        .audit(
            &principal.user_id,
            actions::LOGOUT,
            &principal.user_id,
            Default::default(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sign out everywhere: end every session of the caller, this one included.
#[utoipa::path(post, path = "/v1/auth/logout-all", tag = "auth",
    responses((status = 204, description = "every session of the caller is ended"),
              (status = 401, description = "unauthenticated or session_revoked", body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn logout_all(State(ctx): State<ApiContext>, principal: Principal) -> ApiResult<StatusCode> {
    end_every_session(&ctx, &principal.user_id, RevokeReason::LogoutAll).await?;
    let action = actions::LOGOUT_ALL;
    ctx.store()
        .audit(&principal.user_id, action, &principal.user_id, Default::default())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends every session of `user_id` (here at once, on other replicas within the check interval).
pub(crate) async fn end_every_session(
    ctx: &ApiContext,
    user_id: &str,
    reason: RevokeReason,
) -> ApiResult<u64> {
    let ended = ctx.store().revoke_user_sessions(user_id, reason).await?;
    ctx.sessions().recheck_all();
    Ok(ended)
}

/// Change the caller's password: every session of the user ends, and a new one starts.
#[utoipa::path(post, path = "/v1/auth/password", tag = "auth", request_body = ChangePasswordRequest,
    responses((status = 200, description = "a new session; every other one is ended", body = TokenResponse),
              (status = 400, description = "weak_password", body = crate::error::Problem),
              (status = 401, description = "invalid_password, unauthenticated or session_revoked", body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn change_password(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ValidJson(body): ValidJson<ChangePasswordRequest>,
) -> ApiResult<TokenReply> {
    let user = ctx
        .store()
        .user_by_id(&principal.user_id)
        .await?
        .ok_or(ApiError::Unauthenticated {
            code: "session_revoked",
        })?;
    validate_credentials(&user.email, &body.new_password)?;
    let params = ctx.config().password_hashing.clone();
    let _slot = ctx.hashing().acquire()?;
    let current = SecretString::from(body.current_password);
    if !verify_password(current, Some(user.password_hash.clone()), params.clone()).await {
        return Err(ApiError::Unauthenticated {
            code: "invalid_password",
        });
    }
    let hash = hash_password(SecretString::from(body.new_password), params).await?;
    ctx.store().set_password_hash(&user.id, hash).await?;
    end_every_session(&ctx, &user.id, RevokeReason::PasswordChange).await?;
    ctx.store()
        .audit(&user.id, actions::PASSWORD_CHANGED, &user.id, Default::default())
        .await?;
    let now = chrono::Utc::now().timestamp();
    Ok(TokenReply(
        StatusCode::OK,
        issue_session(&ctx, &user.id, user.role, now).await?,
    ))
}
