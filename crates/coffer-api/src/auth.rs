//! S1: registration, login, refresh. argon2id passwords, short-lived HS256 access tokens,
//! refresh tokens rotated on use with reuse detection per family.

use std::time::Duration;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use coffer_store::tokens::Rotation;
use coffer_store::{Role, StoreError};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::{ApiConfig, PasswordHashing};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Principal, ValidJson};
use crate::ApiContext;

const ISSUER: &str = "coffer";
const AUDIENCE: &str = "coffer-api";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    auth_time: i64,
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
        }
    }

    pub fn issue_access(&self, user_id: &str, role: Role, auth_time: i64) -> ApiResult<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            auth_time,
            iat: now,
            exp: now + self.access_ttl.as_secs() as i64,
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
        })
    }

    pub fn refresh_ttl(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.refresh_ttl).expect("configured TTL fits")
    }
}

/// 256 random bits, URL-safe base64: the refresh token the client keeps.
fn new_refresh_token() -> String {
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
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
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
    let family = coffer_store::new_id();
    let tokens = ctx.tokens();
    ctx.store()
        .store_refresh_token(&refresh_token, user_id, &family, auth_time, tokens.refresh_ttl())
        .await?;
    token_response(ctx, user_id, role, auth_time, refresh_token)
}

fn token_response(
    ctx: &ApiContext,
    user_id: &str,
    role: Role,
    auth_time: i64,
    refresh_token: String,
) -> ApiResult<TokenResponse> {
    Ok(TokenResponse {
        user_id: user_id.to_string(),
        access_token: ctx.tokens().issue_access(user_id, role, auth_time)?,
        refresh_token,
        token_type: "Bearer",
        expires_in: ctx.config().access_token_ttl.as_secs(),
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
) -> ApiResult<(StatusCode, Json<TokenResponse>)> {
    validate_credentials(&body.email, &body.password)?;
    let hash = hash_password(
        SecretString::from(body.password),
        ctx.config().password_hashing.clone(),
    )
    .await?;
    let user = match ctx.store().create_user(&body.email, hash, Role::User).await {
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
    Ok((StatusCode::CREATED, Json(session)))
}

/// Log in with e-mail and password.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse),
              (status = 401, description = "invalid_credentials", body = crate::error::Problem),
              (status = 429, body = crate::error::Problem)))]
pub async fn login(
    State(ctx): State<ApiContext>,
    ValidJson(body): ValidJson<LoginRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let user = ctx.store().user_by_email(&body.email).await?;
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let params = ctx.config().password_hashing.clone();
    let verified = verify_password(SecretString::from(body.password), stored, params).await;
    let user = match user {
        Some(user) if verified => user,
        other => {
            let subject = other.map(|u| u.id).unwrap_or_else(|| "unknown".into());
            ctx.store()
                .audit("anonymous", "auth.login_failed", &subject, Default::default())
                .await?;
            return Err(ApiError::Unauthenticated {
                code: "invalid_credentials",
            });
        }
    };
    Ok(Json(
        issue_session(&ctx, &user.id, user.role, chrono::Utc::now().timestamp()).await?,
    ))
}

/// Exchange a refresh token for a new access token and a new refresh token.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse),
              (status = 401, description = "invalid_refresh_token or refresh_token_reused", body = crate::error::Problem)))]
pub async fn refresh(
    State(ctx): State<ApiContext>,
    ValidJson(body): ValidJson<RefreshRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let successor = new_refresh_token();
    let ttl = ctx.tokens().refresh_ttl();
    match ctx
        .store()
        .rotate_refresh_token(&body.refresh_token, &successor, ttl)
        .await?
    {
        Rotation::Rotated { user_id, auth_time } => {
            let user = ctx
                .store()
                .user_by_id(&user_id)
                .await?
                .ok_or(ApiError::NotFound)?;
            Ok(Json(token_response(
                &ctx, &user.id, user.role, auth_time, successor,
            )?))
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
