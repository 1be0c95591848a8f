//! A user's page: wallets by asset (available / pending / held), risk (tier, flags, frozen),
//! devices, and their transactions, newest first, a page at a time.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use maud::html;
use serde::Deserialize;

use super::layout;
use super::session::Staff;
use super::{ConsoleError, ConsoleResult};
use crate::error::ApiError;
use crate::extract::roles::SupportReaders;
use crate::extract::Cursor;
use crate::views::{DeviceView, TransactionView, WalletView};
use crate::ApiContext;

pub fn router() -> Router<ApiContext> {
    Router::new().route("/console/users/{id}", get(user_page))
}

/// Transactions per page of a user's list.
const TRANSACTIONS_PER_PAGE: u32 = 20;

#[derive(Deserialize)]
struct UserQuery {
    cursor: Option<String>,
}

async fn user_page(
    State(ctx): State<ApiContext>,
    staff: Staff<SupportReaders>,
    Path(id): Path<String>,
    Query(query): Query<UserQuery>,
) -> ConsoleResult<Response> {
    let cursor = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            crate::extract::parse_query::<CursorOnly>(&format!("cursor={text}"))
                .map_err(|_| ConsoleError::BadForm("the page link is not valid".into()))?
                .cursor,
        ),
    };
    let user = ctx.store().user_by_id(&id).await?.ok_or(ApiError::NotFound)?;
    // Audited as the API's read of a user's wallets.
    let wallets = crate::admin::support::wallets_of_user(&ctx, &staff.principal, &id).await?;
    let wallets = wallets
        .iter()
        .map(WalletView::from_doc)
        .collect::<Result<Vec<_>, _>>()?;
    let risk = coffer_store::risk::profile_of(&user, ctx.config().kyc_default_tier);
    let devices: Vec<DeviceView> = ctx
        .store()
        .devices_of(&id)
        .await?
        .iter()
        .map(DeviceView::from_doc)
        .collect();
    let page = ctx
        .store()
        .transactions_page(&id, cursor.as_ref().map(Cursor::as_str), TRANSACTIONS_PER_PAGE)
        .await?;
    let transactions: Vec<TransactionView> = page.items.iter().map(TransactionView::from_doc).collect();
    let body = html! {
        section.card {
            h1 { "User " span.mono { (user.email) } }
            dl.facts {
                dt { "User id" } dd.mono { (user.id) }
                dt { "Role" } dd { (user.role.as_str()) }
                dt { "Since" } dd { (layout::when(&crate::views::time(&user.created_at))) }
                dt { "Verification tier" } dd { (risk.tier.as_str()) }
                dt { "Risk flags" } dd {
                    @if risk.flags.is_empty() { span.muted { "none" } }
                    @for flag in &risk.flags { span.badge.flag { (flag) } " " }
                }
                dt { "Frozen" } dd {
                    @if risk.frozen { span.badge.state-failed { "frozen: nothing goes out" } } @else { "no" }
                }
            }
        }
        section.card {
            h2 { "Wallets" }
            @if wallets.is_empty() { p.muted { "No wallets yet." } }
            @else {
                table.wallets {
                    thead { tr { th { "Asset" } th.num { "Available" } th.num { "Pending" } th.num { "Held" } th { "Wallet id" } } }
                    tbody {
                        @for w in &wallets {
                            tr id=(format!("wallet-{}", w.id)) {
                                td data-label="Asset" { strong { (w.asset) } }
                                td.num data-label="Available" { (w.available) }
                                td.num data-label="Pending" { (w.pending) }
                                td.num data-label="Held" { (w.held) }
                                td.mono data-label="Wallet id" { (w.id) }
                            }
                        }
                    }
                }
            }
        }
        section.card {
            h2 { "Transactions" }
            @if transactions.is_empty() { p.muted { "None." } }
            @else {
                table {
                    thead { tr { th { "Created" } th { "Kind" } th { "State" } th.num { "Amount" } th { "Id" } } }
                    tbody {
                        @for t in &transactions {
                            tr {
                                td data-label="Created" { (layout::when(&t.created_at)) }
                                td data-label="Kind" { (t.kind) }
                                td data-label="State" { (layout::state_badge(&t.state)) }
                                td.num data-label="Amount" { (t.amount) " " (t.asset) }
                                td data-label="Id" { (layout::transaction_link(&t.id)) }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = &page.next_cursor {
                p { a.button href=(format!("/console/users/{id}?cursor={next}")) { "Older transactions" } }
            }
        }
        section.card {
            h2 { "Devices" }
            @if devices.is_empty() { p.muted { "No devices registered." } }
            @else {
                table {
                    thead { tr { th { "Name" } th { "Trusted" } th { "Added" } th { "Revoked" } } }
                    tbody {
                        @for d in &devices {
                            tr {
                                td data-label="Name" { (d.name) }
                                td data-label="Trusted" { @if d.trusted { "yes" } @else { "not yet (from " (layout::when(&d.trusted_from)) ")" } }
                                td data-label="Added" { (layout::when(&d.created_at)) }
                                td data-label="Revoked" { @match &d.revoked_at { Some(at) => (layout::when(at)), None => "—" } }
                            }
                        }
                    }
                }
            }
        }
    };
    let title = format!("User {}", user.email);
    Ok(layout::respond(layout::page(&title, Some(&staff), None, body)))
}

#[derive(Deserialize)]
struct CursorOnly {
    cursor: Cursor,
}
