//! A transaction's page: its timeline of states with time and cause, the ledger entries it wrote
//! on every account (both sides), its chain references (hash, block, confirmations against the
//! asset's threshold, explorer link), and the last real-time event written for its user.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use maud::{html, Markup};

use super::layout::{self, Notice};
use super::session::{ConsoleSession, NoticeQuery, Staff};
use super::ConsoleResult;
use crate::admin::support::EventView;
use crate::extract::roles::{Admins, SupportReaders};
use crate::views::{LedgerEntryView, TransactionView};
use crate::ApiContext;

pub fn router() -> Router<ApiContext> {
    Router::new().route("/console/transactions/{id}", get(transaction_page))
}

/// A chain reference as the page shows it.
struct ChainRef {
    chain: String,
    tx_hash: String,
    block_number: Option<i64>,
    confirmations: i64,
    /// Earlier signed versions of a withdrawal (replaced by a fee bump or a cancel).
    replaced: Vec<String>,
    nonce: Option<i64>,
}

async fn transaction_page(
    State(ctx): State<ApiContext>,
    staff: Staff<SupportReaders>,
    Path(id): Path<String>,
    Query(query): Query<NoticeQuery>,
) -> ConsoleResult<Response> {
    // Audited as the API's read of a transaction's story.
    let story = crate::admin::support::transaction_story_of(&ctx, &staff.principal, &id).await?;
    let tx = &story.transaction;
    let view = TransactionView::from_doc(tx);
    let entries = story
        .entries
        .iter()
        .map(|e| LedgerEntryView::from_doc(e, tx.decimals))
        .collect::<Result<Vec<_>, _>>()?;
    let chain = match &tx.broadcast {
        Some(b) => Some(ChainRef {
            chain: b.chain.clone(),
            tx_hash: b.mined_tx_hash.clone().unwrap_or_else(|| b.tx_hash.clone()),
            block_number: b.block_number,
            confirmations: b.confirmations,
            replaced: b.replaced.iter().map(|v| v.tx_hash.clone()).collect(),
            nonce: Some(b.nonce),
        }),
        None => ctx
            .store()
            .chain_deposit(&tx.ledger_key)
            .await?
            .map(|d| ChainRef {
                chain: d.chain,
                tx_hash: d.tx_hash,
                block_number: Some(d.block_number),
                confirmations: d.confirmations,
                replaced: Vec::new(),
                nonce: None,
            }),
    };
    let asset = ctx.assets().current().get(&tx.asset).cloned();
    let last_event = story
        .last_event
        .as_ref()
        .map(|e| EventView::from_doc(e, story.last_event_published));
    let body = html! {
        (summary(&view, &tx.initiated_by))
        @if tx.state == coffer_domain::TxState::ManualReview {
            (review_hint(&staff))
        }
        (timeline(&view))
        (ledger(&entries))
        (chain_section(chain.as_ref(), asset.as_ref()))
        (event_section(last_event.as_ref()))
    };
    let notice = Notice::from_code(query.notice.as_deref());
    let title = format!("Transaction {}", layout::short(&id));
    Ok(layout::respond(layout::page(&title, Some(&staff), notice, body)))
}

fn wallet_link(id: &str) -> Markup {
    html! { a.mono href=(format!("/console/find?q={id}")) title=(id) { (layout::short(id)) } }
}

fn summary(view: &TransactionView, initiated_by: &str) -> Markup {
    let since = view.timeline.last().map(|c| c.at.clone()).unwrap_or_default();
    html! {
        section.card {
            h1 { (view.kind) " " (view.amount) " " (view.asset) }
            p { (layout::state_badge(&view.state)) " since " (layout::when(&since)) span.muted { " · " (age(&since)) } }
            dl.facts {
                dt { "Transaction id" } dd.mono { (view.id) }
                @if let Some(from) = &view.from_wallet_id { dt { "From wallet" } dd { (wallet_link(from)) } }
                @if let Some(to) = &view.to_wallet_id { dt { "To wallet" } dd { (wallet_link(to)) } }
                @if let Some(destination) = &view.destination { dt { "Destination" } dd.mono { (destination) } }
                @if let Some(reference) = &view.external_reference { dt { "External reference" } dd.mono { (reference) } }
                dt { "Initiated by" } dd.mono { (initiated_by) }
                dt { "Created" } dd { (layout::when(&view.created_at)) }
                dt { "Updated" } dd { (layout::when(&view.updated_at)) }
            }
        }
    }
}

/// How long ago an RFC 3339 time was, in words.
fn age(rfc3339: &str) -> String {
    let Ok(at) = chrono::DateTime::parse_from_rfc3339(rfc3339) else {
        return String::new();
    };
    let seconds = (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match seconds {
        0..=119 => format!("{seconds} s ago"),
        120..=7199 => format!("{} min ago", seconds / 60),
        7200..=172_799 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

fn review_hint(staff: &ConsoleSession) -> Markup {
    html! {
        p.notice {
            "Waiting in manual review. "
            @if staff.may::<Admins>() { a href="/console/reviews" { "Decide it in the review queue." } }
            @else { "An admin decides it in the review queue." }
        }
    }
}

fn timeline(view: &TransactionView) -> Markup {
    html! {
        section.card #timeline {
            h2 { "Timeline" }
            ol.timeline {
                @for change in &view.timeline {
                    li {
                        div {
                            @if let Some(from) = &change.from { (layout::state_badge(from)) " → " }
                            (layout::state_badge(&change.to))
                        }
                        div.muted { (layout::when(&change.at)) }
                        div.cause { (change.cause) }
                    }
                }
            }
        }
    }
}

fn ledger(entries: &[LedgerEntryView]) -> Markup {
    html! {
        section.card #ledger {
            h2 { "Ledger entries" }
            p.muted { "Every posting this transaction wrote, on user wallets and platform accounts; they sum to zero." }
            @if entries.is_empty() { p.muted { "None yet." } }
            @else {
                table {
                    thead { tr { th { "Account" } th { "Bucket" } th { "Kind" } th.num { "Amount" } th { "Posted" } } }
                    tbody {
                        @for e in entries {
                            tr {
                                td.mono data-label="Account" { (e.wallet_id) }
                                td data-label="Bucket" { (e.bucket) }
                                td data-label="Kind" { (e.kind) }
                                td.num data-label="Amount" { (e.amount) }
                                td data-label="Posted" { (layout::when(&e.created_at)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn chain_section(chain: Option<&ChainRef>, asset: Option<&coffer_domain::AssetConfig>) -> Markup {
    let Some(chain) = chain else {
        return html! {};
    };
    let required = asset.map(|a| i64::from(a.confirmations_required));
    let explorer = asset.and_then(|a| a.explorer_link(&chain.tx_hash));
    html! {
        section.card #chain {
            h2 { "On chain" }
            dl.facts {
                dt { "Chain" } dd { (chain.chain) }
                dt { "Transaction hash" } dd.mono {
                    @match &explorer { Some(url) => a href=(url) rel="noreferrer noopener" target="_blank" { (chain.tx_hash) }, None => (chain.tx_hash) }
                }
                @if let Some(nonce) = chain.nonce { dt { "Nonce" } dd { (nonce) } }
                dt { "Block" } dd { @match chain.block_number { Some(n) => (n), None => span.muted { "not mined yet" } } }
                dt { "Confirmations" } dd #confirmations {
                    (chain.confirmations)
                    @if let Some(required) = required {
                        " of " (required) " required"
                        @if chain.confirmations >= required { " " span.badge.state-confirmed { "final" } }
                    }
                }
                @if !chain.replaced.is_empty() {
                    dt { "Replaced versions" } dd.mono { @for hash in &chain.replaced { div { (hash) } } }
                }
            }
        }
    }
}

fn event_section(event: Option<&EventView>) -> Markup {
    html! {
        section.card #event {
            h2 { "Last real-time event" }
            @match event {
                None => p.muted { "No event was written for this transaction." },
                Some(e) => {
                    dl.facts {
                        dt { "Type" } dd.mono { (e.event_type) }
                        dt { "Written" } dd { (layout::when(&e.created_at)) }
                        dt { "Sent to the user" } dd { @if e.published { "yes (published)" } @else { "not yet: waiting for the outbox publisher" } }
                    }
                    pre { (serde_json::to_string_pretty(&e.data).unwrap_or_default()) }
                }
            }
        }
    }
}
