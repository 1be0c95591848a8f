//! The staff support console (O7) at `/console`: server-rendered HTML for support, finance,
//! engineering and admins, on the same authorization and the same store calls as `/v1/admin`.
//!
//! - Sign-in with e-mail, password and the TOTP code (staff only) starts a server-side session
//!   (the API's session documents in MongoDB, so any replica serves it and sign-out ends it
//!   everywhere), bound to an `HttpOnly`, `SameSite=Strict`, `Path=/console` cookie (`Secure`
//!   unless `COFFER_CONSOLE_INSECURE_COOKIE` is set for local development). No token reaches
//!   script: the console has no script at all.
//! - Every POST carries the session's CSRF token in a hidden field, and a cross-site one
//!   (`Origin` of another site, `Sec-Fetch-Site` other than `same-origin`) is refused first.
//! - Every page has a strict Content-Security-Policy (`default-src 'self'`, no inline script or
//!   style), `frame-ancestors 'none'` and `X-Frame-Options: DENY`, and `Cache-Control: no-store`.
//! - The role check ([`session::Staff`]) runs before a form is read; each action calls the admin
//!   API's own inner function, so it is validated and audited as its API twin is.
//!
//! One router per feature; each page module renders with [`layout`].

pub mod adjustments;
pub mod find;
pub mod layout;
pub mod operations;
pub mod reviews;
pub mod session;
pub mod transactions;
pub mod users;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::ApiContext;

/// The console's path prefix (also the cookie's `Path`).
pub const PREFIX: &str = "/console";

/// The stylesheet, embedded in the binary (served at `/console/console.css`).
const CSS: &str = include_str!("console.css");

/// `Content-Security-Policy` of every console response: only this origin's stylesheet; no
/// script, no inline style, no frames, forms post only here.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's routes, feature by feature, with the security headers on every response.
pub fn router(ctx: &ApiContext) -> Router<ApiContext> {
    let sign_in = session::router().route_layer(from_fn_with_state(ctx.clone(), crate::limits::auth_limit));
    let pages = Router::new()
        .merge(find::router())
        .merge(users::router())
        .merge(transactions::router())
        .merge(reviews::router())
        .merge(adjustments::router())
        .merge(operations::router())
        .route_layer(from_fn_with_state(ctx.clone(), crate::limits::reads_limit));
    Router::new()
        .merge(sign_in)
        .merge(pages)
        .route("/console/console.css", get(stylesheet))
        .layer(from_fn(security))
}

async fn stylesheet() -> Response {
    let css = HeaderValue::from_static("text/css; charset=utf-8");
    ([(header::CONTENT_TYPE, css)], CSS).into_response()
}

/// Refuses a cross-site POST before anything else runs, and sets the security headers.
async fn security(request: Request, next: Next) -> Response {
    let mut response = if request.method() == Method::POST && cross_site(&request) {
        ConsoleError::CrossSite.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::PRAGMA, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Same-origin requests keep their Origin and Referer (a "no-referrer" policy would make
        // a form POST's Origin "null"); nothing leaves for other sites.
        (header::REFERRER_POLICY, "same-origin"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Whether a request comes from another site: a browser says so in `Sec-Fetch-Site`, or sends an
/// `Origin` that is not this host. A client that sends neither (not a browser) still needs the
/// session cookie and the CSRF token.
fn cross_site(request: &Request) -> bool {
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        if site.as_bytes() != b"same-origin" {
            return true;
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.strip_prefix("https://").or_else(|| o.strip_prefix("http://")));
    match (origin_host, host) {
        (Some(origin_host), Some(host)) => !origin_host.eq_ignore_ascii_case(host),
        _ => true,
    }
}

/// Why a console request failed, rendered as a page that says what to do.
#[derive(Debug)]
pub enum ConsoleError {
    /// No session, or it ended: sign in again (a redirect for pages, 401 for forms).
    SignIn { post: bool },
    /// The caller's role may not use this page or action.
    Role,
    /// A form without this session's CSRF token.
    Csrf,
    /// A POST from another site.
    CrossSite,
    /// A form that does not parse.
    BadForm(String),
    /// What the admin API's inner function refused.
    Api(ApiError),
}

impl From<ApiError> for ConsoleError {
    fn from(error: ApiError) -> Self {
        ConsoleError::Api(error)
    }
}

impl From<coffer_store::StoreError> for ConsoleError {
    fn from(error: coffer_store::StoreError) -> Self {
        ConsoleError::Api(error.into())
    }
}

pub type ConsoleResult<T> = Result<T, ConsoleError>;

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, title, advice) = match self {
            ConsoleError::SignIn { post: false } => {
                return Redirect::to("/console/sign-in?notice=signed_out").into_response()
            }
            ConsoleError::SignIn { post: true } => (
                StatusCode::UNAUTHORIZED,
                "Your session has ended".to_string(),
                "Sign in again, then repeat the action.".to_string(),
            ),
            ConsoleError::Role => (
                StatusCode::FORBIDDEN,
                "Your role may not do this".to_string(),
                "This page or action is for another staff role. Ask an admin if you need it.".to_string(),
            ),
            ConsoleError::Csrf => (
                StatusCode::FORBIDDEN,
                "The form did not come from your session".to_string(),
                "Reload the page and submit the form again.".to_string(),
            ),
            ConsoleError::CrossSite => (
                StatusCode::FORBIDDEN,
                "Refused: the request came from another site".to_string(),
                "Open the console directly and use its forms.".to_string(),
            ),
            ConsoleError::BadForm(detail) => (
                StatusCode::BAD_REQUEST,
                "The form is incomplete".to_string(),
                format!("{detail}. Go back, fill in every field and submit again."),
            ),
            ConsoleError::Api(error) => api_advice(error),
        };
        let page = layout::error_page(status, &title, &advice);
        (status, layout::respond(page)).into_response()
    }
}

/// The title and the advice of a refusal by the admin API's logic.
fn api_advice(error: ApiError) -> (StatusCode, String, String) {
    let status = error.status();
    if status.is_server_error() {
        tracing::error!(code = error.code(), error = %error, "console request failed");
        return (
            status,
            "Something went wrong on our side".to_string(),
            "Nothing was changed if the action did not finish. Try again in a minute; if it keeps failing, tell engineering (the time helps find it in the logs).".to_string(),
        );
    }
    let detail = error.detail().unwrap_or_else(|| error.to_string());
    let advice = match error.code() {
        "not_found" => "Check the id, or search again from the console's home page.".to_string(),
        "self_approval" => "Another admin has to decide it.".to_string(),
        "adjustment_not_proposed" | "state_conflict" => {
            "Someone else decided it already: reload the list.".to_string()
        }
        "insufficient_funds" => "The wallet cannot cover this debit: propose a smaller one.".to_string(),
        "rate_limited" => "Wait a minute, then try again.".to_string(),
        _ => "Correct the form and submit it again.".to_string(),
    };
    (status, format!("Refused: {detail}"), advice)
}

/// A `303 See Other` to `path` (after a POST, so a reload does not repeat it).
pub(crate) fn see_other(path: &str) -> Response {
    Redirect::to(path).into_response()
}

/// Where an approval leads: `recorded` when it was only the first of two (the API answered 202:
/// above the two-person threshold nothing moved yet), else `executed`.
pub(crate) fn after_approval(status: axum::http::StatusCode, recorded: &str, executed: &str) -> Response {
    see_other(if status == axum::http::StatusCode::ACCEPTED {
        recorded
    } else {
        executed
    })
}
