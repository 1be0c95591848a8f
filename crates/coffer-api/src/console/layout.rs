//! The console's page frame: head, navigation by role, notices, error pages; small helpers the
//! feature pages share. No inline script or style anywhere (the Content-Security-Policy forbids
//! them): one embedded stylesheet.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::session::ConsoleSession;
use crate::extract::roles::{AdjustmentReaders, Operators, ReviewReaders, SupportReaders};

/// A message at the top of a page.
pub struct Notice {
    pub error: bool,
    pub text: String,
}

impl Notice {
    pub fn ok(text: impl Into<String>) -> Notice {
        Notice {
            error: false,
            text: text.into(),
        }
    }

    pub fn error(text: impl Into<String>) -> Notice {
        Notice {
            error: true,
            text: text.into(),
        }
    }

    /// The notice a redirect names with `?notice=` (a fixed set: nothing from the URL is echoed).
    pub fn from_code(code: Option<&str>) -> Option<Notice> {
        let text = match code? {
            "signed_out" => "You are signed out. Sign in to continue.",
            "proposed" => "Adjustment proposed. Another admin has to approve it before anything moves.",
            "approved" => "Approved.",
            "approval_recorded" => "Approval recorded. Above the two-person threshold a second, different admin has to approve it.",
            "rejected" => "Rejected.",
            "reconciliation_started" => "Reconciliation started.",
            _ => return None,
        };
        Some(Notice::ok(text))
    }
}

/// A whole page: `staff` None is the signed-out frame (the sign-in page).
pub fn page(title: &str, staff: Option<&ConsoleSession>, notice: Option<Notice>, body: Markup) -> Markup {
    page_with_refresh(title, staff, notice, None, body)
}

/// [`page`] that reloads itself (or goes to another URL) after a few seconds: how a page shows
/// that a long operation is still running, without script.
pub fn page_with_refresh(
    title: &str,
    staff: Option<&ConsoleSession>,
    notice: Option<Notice>,
    refresh: Option<(u32, &str)>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some((seconds, url)) = refresh {
                    meta http-equiv="refresh" content=(format!("{seconds};url={url}"));
                }
                title { (title) " · Coffer console" }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                header.top {
                    a.brand href="/console" { "Coffer console" }
                    @if let Some(staff) = staff {
                        nav {
                            @if staff.may::<SupportReaders>() { a href="/console" { "Find" } }
                            @if staff.may::<ReviewReaders>() { a href="/console/reviews" { "Reviews" } }
                            @if staff.may::<AdjustmentReaders>() { a href="/console/adjustments" { "Adjustments" } }
                            @if staff.may::<Operators>() {
                                a href="/console/reconciliations" { "Reconciliation" }
                                a href="/console/audit" { "Audit" }
                            }
                        }
                        form.signout method="post" action="/console/sign-out" {
                            (csrf(staff))
                            span.who { (staff.email) " · " (staff.principal.role.as_str()) }
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    @if let Some(notice) = notice {
                        p class=(if notice.error { "notice error" } else { "notice" }) role="status" { (notice.text) }
                    }
                    (body)
                }
            }
        }
    }
}

/// The hidden CSRF field of a form.
pub fn csrf(staff: &ConsoleSession) -> Markup {
    html! { input type="hidden" name=(super::session::CSRF_FIELD) value=(staff.csrf); }
}

/// An error page: what happened and what to do.
pub fn error_page(status: StatusCode, title: &str, advice: &str) -> Markup {
    let body = html! {
        section.card {
            h1 { (title) }
            p { (advice) }
            p.muted { "HTTP " (status.as_u16()) " · " a href="/console" { "Back to the console" } }
        }
    };
    page(title, None, None, body)
}

/// Markup as an HTML response.
pub fn respond(markup: Markup) -> Response {
    Html(markup.into_string()).into_response()
}

/// A short id for tables (the full id is the link's target and title).
pub fn short(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 14 {
        return id.to_string();
    }
    let head: String = chars[..8].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// A link to a transaction's page.
pub fn transaction_link(id: &str) -> Markup {
    html! { a.mono href=(format!("/console/transactions/{id}")) title=(id) { (short(id)) } }
}

/// A link to a user's page.
pub fn user_link(id: &str) -> Markup {
    html! { a.mono href=(format!("/console/users/{id}")) title=(id) { (short(id)) } }
}

/// A state as a badge (its class names the state, for colour).
pub fn state_badge(state: &str) -> Markup {
    html! { span class=(format!("badge state-{state}")) { (state.replace('_', " ")) } }
}

/// A time as the API writes it, shown without the milliseconds' noise.
pub fn when(rfc3339: &str) -> Markup {
    let shown = rfc3339.replace('T', " ");
    let shown = shown.split('.').next().unwrap_or(&shown).trim_end_matches('Z');
    html! { time datetime=(rfc3339) { (shown) " UTC" } }
}
