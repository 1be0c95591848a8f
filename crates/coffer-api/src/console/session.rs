//! Console sign-in and sign-out, the session cookie, the role check and the CSRF check.
//!
//! The session is a document of the API's session collection ([`coffer_store::tokens`]), so
//! every replica sees it and a sign-out or a staff revocation ends it everywhere. The cookie holds
//! the session id and an HMAC of it under a key derived from `COFFER_JWT_SECRET`: it cannot be
//! forged, and it names nothing but the session. The CSRF token is a second HMAC of the session
//! id (another label), so it is per session and needs no storage.

use std::marker::PhantomData;

use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use coffer_store::audit::Audit;
use coffer_store::audit_chain::actions;
use coffer_store::tokens::RevokeReason;
use coffer_store::Role;
use hmac::{Hmac, Mac};
use maud::html;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::Sha256;

use super::layout::{self, Notice};
use super::{ConsoleError, ConsoleResult};
use crate::error::ApiError;
use crate::extract::{Principal, RoleSet};
use crate::limits::ClientIp;
use crate::ApiContext;

/// The session cookie's name.
pub const COOKIE: &str = "coffer_console";
/// The hidden form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// Sign-in and sign-out.
pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
}

/// Every staff role: who may sign in at all.
pub struct AnyStaff;
impl RoleSet for AnyStaff {
    const ROLES: &'static [Role] = &[Role::Support, Role::Finance, Role::Engineering, Role::Admin];
}

/// The signed-in staff member of a console request.
#[derive(Debug, Clone)]
pub struct ConsoleSession {
    /// As the admin API's inner functions take it.
    pub principal: Principal,
    pub email: String,
    /// This session's CSRF token (put in every form).
    pub csrf: String,
}

impl ConsoleSession {
    /// Whether the signed-in role is in `R` (which sections and buttons to show).
    pub fn may<R: RoleSet>(&self) -> bool {
        R::ROLES.contains(&self.principal.role)
    }
}

/// The signed-in staff member, admitted because their role is in `R`: checked before any form is
/// read (a refused role learns nothing from a form's validation).
pub struct Staff<R: RoleSet> {
    pub session: ConsoleSession,
    roles: PhantomData<R>,
}

impl<R: RoleSet> std::ops::Deref for Staff<R> {
    type Target = ConsoleSession;

    fn deref(&self) -> &ConsoleSession {
        &self.session
    }
}

impl<R: RoleSet> FromRequestParts<ApiContext> for Staff<R> {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, Self::Rejection> {
        let post = parts.method == Method::POST;
        let session = match parts.extensions.get::<ConsoleSession>() {
            Some(session) => session.clone(),
            None => {
                let session = signed_in(ctx, &parts.headers)
                    .await?
                    .ok_or(ConsoleError::SignIn { post })?;
                parts.extensions.insert(session.clone());
                session
            }
        };
        if !R::ROLES.contains(&session.principal.role) {
            return Err(ConsoleError::Role);
        }
        Ok(Staff {
            session,
            roles: PhantomData,
        })
    }
}

/// The session the request's cookie names, if the cookie is genuine, the session active and its
/// user still staff.
async fn signed_in(ctx: &ApiContext, headers: &HeaderMap) -> ConsoleResult<Option<ConsoleSession>> {
    let Some(session_id) = cookie(headers).and_then(|value| verified_session_id(ctx, &value)) else {
        return Ok(None);
    };
    let Some(session) = ctx.store().session(&session_id).await? else {
        return Ok(None);
    };
    if !session.is_active_at(coffer_store::codec::now()) {
        return Ok(None);
    }
    let Some(user) = ctx.store().user_by_id(&session.user_id).await? else {
        return Ok(None);
    };
    if !AnyStaff::ROLES.contains(&user.role) {
        return Ok(None);
    }
    let csrf = mac(ctx, "csrf", &session.id);
    Ok(Some(ConsoleSession {
        principal: Principal {
            user_id: user.id,
            role: user.role,
            auth_time: session.created_at.timestamp(),
            session_id: session.id,
        },
        email: user.email,
        csrf,
    }))
}

/// HMAC-SHA256 (hex) of `session_id` under the console's key, for `purpose`.
fn mac(ctx: &ApiContext, purpose: &str, session_id: &str) -> String {
    hex::encode(mac_of(ctx, purpose, session_id).finalize().into_bytes())
}

fn mac_of(ctx: &ApiContext, purpose: &str, session_id: &str) -> Hmac<Sha256> {
    let key = ctx.config().jwt_secret.expose_secret().as_bytes();
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(b"coffer-console:");
    mac.update(purpose.as_bytes());
    mac.update(b":");
    mac.update(session_id.as_bytes());
    mac
}

/// Whether `given` (hex) is the MAC of `session_id` for `purpose` (compared in constant time).
fn mac_matches(ctx: &ApiContext, purpose: &str, session_id: &str, given: &str) -> bool {
    let Ok(bytes) = hex::decode(given) else {
        return false;
    };
    mac_of(ctx, purpose, session_id).verify_slice(&bytes).is_ok()
}

fn verified_session_id(ctx: &ApiContext, value: &str) -> Option<String> {
    let (session_id, tag) = value.split_once('.')?;
    mac_matches(ctx, "cookie", session_id, tag).then(|| session_id.to_string())
}

/// The console cookie's value, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The `Set-Cookie` of a session (`max_age_seconds` 0 clears it).
fn set_cookie(ctx: &ApiContext, value: &str, max_age_seconds: u64) -> HeaderValue {
    let secure = if ctx.config().console_cookie_secure {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={value}; Path={}; HttpOnly; SameSite=Strict; Max-Age={max_age_seconds}{secure}",
        super::PREFIX
    );
    HeaderValue::from_str(&cookie).expect("the cookie is ASCII")
}

/// A form checked against the session's CSRF token, then parsed (`application/x-www-form-urlencoded`).
/// Put it after a [`Staff`] extractor: the role is checked before the body is read.
pub struct CsrfForm<T>(pub T);

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: Option<String>,
}

impl<T: DeserializeOwned> FromRequest<ApiContext> for CsrfForm<T> {
    type Rejection = ConsoleError;

    async fn from_request(request: Request, ctx: &ApiContext) -> Result<Self, Self::Rejection> {
        let session = request
            .extensions()
            .get::<ConsoleSession>()
            .cloned()
            .ok_or(ConsoleError::SignIn { post: true })?;
        let text = form_text(request, ctx).await?;
        let given: CsrfOnly = crate::extract::parse_query(&text).map_err(|_| ConsoleError::Csrf)?;
        let valid = given
            .csrf
            .is_some_and(|token| mac_matches(ctx, "csrf", &session.principal.session_id, &token));
        if !valid {
            return Err(ConsoleError::Csrf);
        }
        parse_form(&text).map(CsrfForm)
    }
}

/// A form's body as text (the API's body limit applies).
async fn form_text(request: Request, ctx: &ApiContext) -> ConsoleResult<String> {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(ConsoleError::BadForm("the request is not a form".into()));
    }
    let bytes = axum::body::Bytes::from_request(request, ctx)
        .await
        .map_err(|_| ConsoleError::BadForm("the form could not be read".into()))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| ConsoleError::BadForm("the form is not UTF-8".into()))
}

fn parse_form<T: DeserializeOwned>(text: &str) -> ConsoleResult<T> {
    crate::extract::parse_query(text).map_err(|e| match e {
        ApiError::BadRequest {
            field: Some(field), ..
        } => ConsoleError::BadForm(format!("the field {field} is missing or invalid")),
        _ => ConsoleError::BadForm("a field is missing or invalid".into()),
    })
}

#[derive(Deserialize)]
pub struct NoticeQuery {
    pub notice: Option<String>,
}

async fn sign_in_page(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Query(query): Query<NoticeQuery>,
) -> ConsoleResult<Response> {
    if signed_in(&ctx, &headers).await?.is_some() {
        return Ok(super::see_other("/console"));
    }
    let notice = Notice::from_code(query.notice.as_deref());
    Ok(sign_in_form(StatusCode::OK, notice, "").into_response())
}

fn sign_in_form(status: StatusCode, notice: Option<Notice>, email: &str) -> Response {
    let body = html! {
        form.card.narrow method="post" action="/console/sign-in" {
            h1 { "Staff sign-in" }
            p.muted { "For support, finance, engineering and admin staff. Your authenticator app gives the code." }
            label for="email" { "E-mail" }
            input #email type="email" name="email" value=(email) required autocomplete="username";
            label for="password" { "Password" }
            input #password type="password" name="password" required autocomplete="current-password";
            label for="totp_code" { "Authenticator code" }
            input #totp_code type="text" name="totp_code" inputmode="numeric" pattern="[0-9]{6}"
                maxlength="6" required autocomplete="one-time-code";
            button #sign-in type="submit" { "Sign in" }
        }
    };
    (
        status,
        layout::respond(layout::page("Sign in", None, notice, body)),
    )
        .into_response()
}

#[derive(Deserialize)]
struct SignInForm {
    email: String,
    password: String,
    totp_code: String,
}

async fn sign_in(
    State(ctx): State<ApiContext>,
    ClientIp(ip): ClientIp,
    request: Request,
) -> ConsoleResult<Response> {
    let text = form_text(request, &ctx).await?;
    let form: SignInForm = parse_form(&text)?;
    let email = form.email.trim().to_string();
    let code = form.totp_code.trim().to_string();
    let user = match crate::auth::authenticate(&ctx, ip, &email, form.password, Some(&code)).await {
        Ok(user) => user,
        Err(error) => return Ok(sign_in_refused(&error, &email)),
    };
    if !AnyStaff::ROLES.contains(&user.role) {
        let details = serde_json::json!({ "reason": "not_staff", "via": "console" });
        ctx.store()
            .audit("anonymous", actions::LOGIN_FAILED, &user.id, details)
            .await?;
        let notice = Notice::error("This console is for staff accounts only. Customers use the app.");
        return Ok(sign_in_form(StatusCode::FORBIDDEN, Some(notice), &email));
    }
    let lifetime = ctx.config().console_session_lifetime;
    let lifetime_chrono = chrono::Duration::from_std(lifetime).expect("configured lifetime fits");
    // The session's refresh token is never handed out: the cookie stands for the session.
    let unused_refresh_token = crate::auth::new_refresh_token();
    let started = ctx
        .store()
        .start_session(
            &user.id,
            &unused_refresh_token,
            chrono::Utc::now().timestamp(),
            lifetime_chrono,
            lifetime_chrono,
            Audit::new(&user.id, actions::LOGIN),
        )
        .await?;
    let value = format!("{}.{}", started.id, mac(&ctx, "cookie", &started.id));
    let mut response = super::see_other("/console");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&ctx, &value, lifetime.as_secs()));
    Ok(response)
}

/// The sign-in form again, saying what went wrong and what to do.
fn sign_in_refused(error: &ApiError, email: &str) -> Response {
    let text = match error.code() {
        "invalid_credentials" | "invalid_mfa_code" | "mfa_required" => {
            "The e-mail, password or authenticator code is wrong (each code works once). Check them and try again with a fresh code."
        }
        "mfa_enrollment_required" => {
            "Your staff account has no authenticator yet: ask an admin to enroll you (`coffer user mfa-enroll`)."
        }
        "rate_limited" => "Too many failed sign-ins from here: wait 15 minutes, then try again.",
        "retry_later" => "The server is busy: try again in a few seconds.",
        _ => "Sign-in failed: try again in a minute.",
    };
    sign_in_form(error.status(), Some(Notice::error(text)), email)
}

async fn sign_out(
    State(ctx): State<ApiContext>,
    staff: Staff<AnyStaff>,
    CsrfForm(_): CsrfForm<serde::de::IgnoredAny>,
) -> ConsoleResult<Response> {
    let principal = &staff.principal;
    ctx.store()
        .revoke_session(&principal.session_id, RevokeReason::Logout)
        .await?;
    ctx.sessions().forget(&principal.session_id);
    let details = serde_json::json!({ "via": "console" });
    ctx.store()
        .audit(&principal.user_id, actions::LOGOUT, &principal.user_id, details)
        .await?;
    let mut response = super::see_other("/console/sign-in?notice=signed_out");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&ctx, "", 0));
    Ok(response)
}
