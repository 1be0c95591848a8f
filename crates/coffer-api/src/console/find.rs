//! The console's home page and "find a user": by e-mail, wallet id, transaction id, chain
//! transaction hash or deposit address.

use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use maud::html;
use serde::Deserialize;

use super::layout::{self, Notice};
use super::session::{AnyStaff, Staff};
use super::ConsoleResult;
use crate::extract::roles::{AdjustmentReaders, Operators, ReviewReaders, SupportReaders};
use crate::ApiContext;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/console", get(home))
        .route("/console/find", get(find))
}

/// The longest search text looked up.
const QUERY_CHARS_MAX: usize = 320;

async fn home(staff: Staff<AnyStaff>) -> Response {
    layout::respond(layout::page("Home", Some(&staff), None, home_body(&staff, "")))
}

fn home_body(staff: &super::session::ConsoleSession, query: &str) -> maud::Markup {
    html! {
        @if staff.may::<SupportReaders>() {
            form.card.search method="get" action="/console/find" {
                h1 { "Find a user" }
                label for="q" { "E-mail, wallet id, transaction id, chain transaction hash or deposit address" }
                div.row {
                    input #q type="search" name="q" value=(query) required maxlength=(QUERY_CHARS_MAX) autofocus;
                    button #find type="submit" { "Find" }
                }
            }
        }
        section.card {
            h2 { "Your sections" }
            ul.links {
                @if staff.may::<ReviewReaders>() { li { a href="/console/reviews" { "Review queue" } " — withdrawals and transfers waiting for a decision" } }
                @if staff.may::<AdjustmentReaders>() { li { a href="/console/adjustments" { "Adjustments" } " — propose, approve or reject balance corrections" } }
                @if staff.may::<Operators>() {
                    li { a href="/console/reconciliations" { "Reconciliation runs" } " — the books checked against the ledger and the chain" }
                    li { a href="/console/audit" { "Audit verification" } " — the tamper-evident audit trail" }
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct FindQuery {
    q: Option<String>,
}

/// What a search text names.
enum Found {
    User(String),
    Transaction(String),
    Transactions(Vec<String>),
    PlatformWallet,
    Nothing,
}

async fn find(
    State(ctx): State<ApiContext>,
    staff: Staff<SupportReaders>,
    Query(query): Query<FindQuery>,
) -> ConsoleResult<Response> {
    let text: String = query
        .q
        .unwrap_or_default()
        .trim()
        .chars()
        .take(QUERY_CHARS_MAX)
        .collect();
    if text.is_empty() {
        return Ok(super::see_other("/console"));
    }
    let found = look_up(&ctx, &text).await?;
    let notice = match found {
        Found::User(id) => return Ok(super::see_other(&format!("/console/users/{id}"))),
        Found::Transaction(id) => return Ok(super::see_other(&format!("/console/transactions/{id}"))),
        Found::Transactions(ids) => {
            let body = html! {
                section.card {
                    h1 { "Transactions of this chain transaction" }
                    ul.links { @for id in &ids { li { (layout::transaction_link(id)) } } }
                }
                (home_body(&staff, &text))
            };
            return Ok(layout::respond(layout::page("Found", Some(&staff), None, body)));
        }
        Found::PlatformWallet => Notice::error(
            "That is a platform account (custody, fees, suspense), not a user's wallet: look it up in the reconciliation reports.",
        ),
        Found::Nothing => Notice::error(
            "Nothing matches. Search by the full e-mail address, a wallet or transaction id, a chain transaction hash (0x and 64 hex digits) or a deposit address (0x and 40 hex digits).",
        ),
    };
    let page = layout::page("Find", Some(&staff), Some(notice), home_body(&staff, &text));
    Ok(layout::respond(page))
}

fn is_hex(text: &str, digits: usize) -> bool {
    text.len() == digits + 2
        && (text.starts_with("0x") || text.starts_with("0X"))
        && text[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

async fn look_up(ctx: &ApiContext, text: &str) -> ConsoleResult<Found> {
    let store = ctx.store();
    if text.contains('@') {
        let user = store.user_by_email(text).await?;
        return Ok(user.map_or(Found::Nothing, |u| Found::User(u.id)));
    }
    if is_hex(text, 64) {
        let mut ids = store.transactions_by_chain_hash(text).await?;
        return Ok(match ids.len() {
            0 => Found::Nothing,
            1 => Found::Transaction(ids.remove(0)),
            _ => Found::Transactions(ids),
        });
    }
    if is_hex(text, 40) {
        let address = store.deposit_address_record(text).await?;
        return Ok(address.map_or(Found::Nothing, |a| Found::User(a.user_id)));
    }
    if let Some(wallet) = store.wallet_by_id(text).await? {
        return Ok(wallet.user_id.map_or(Found::PlatformWallet, Found::User));
    }
    if store.transaction_by_id(text).await?.is_some() {
        return Ok(Found::Transaction(text.to_string()));
    }
    Ok(Found::Nothing)
}
