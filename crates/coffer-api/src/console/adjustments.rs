//! Maker-checker adjustments: finance (or an admin) proposes; a different admin approves (the
//! balanced adjustment is posted) or rejects. Each action calls the admin API's own function.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use coffer_store::adjustments::AdjustmentStatus;
use maud::html;
use serde::Deserialize;

use super::layout::{self, Notice};
use super::reviews::ReasonForm;
use super::session::{CsrfForm, Staff};
use super::ConsoleResult;
use crate::admin::adjustments::{AdjustmentView, ProposeAdjustmentRequest};
use crate::extract::roles::{AdjustmentReaders, Admins, Proposers};
use crate::ApiContext;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/console/adjustments", get(list).post(propose))
        .route("/console/adjustments/{id}/approve", post(approve))
        .route("/console/adjustments/{id}/reject", post(reject))
}

/// The most adjustments a list shows (newest first).
const LIST_MAX: u32 = 50;

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    notice: Option<String>,
    /// Prefills the proposal form (a link from a user's wallet).
    wallet_id: Option<String>,
}

async fn list(
    State(ctx): State<ApiContext>,
    staff: Staff<AdjustmentReaders>,
    Query(query): Query<ListQuery>,
) -> ConsoleResult<Response> {
    let status = match query.status.as_deref() {
        Some("approved") => Some(AdjustmentStatus::Approved),
        Some("rejected") => Some(AdjustmentStatus::Rejected),
        Some("all") => None,
        _ => Some(AdjustmentStatus::Proposed),
    };
    let shown = status.map_or("all", |s| s.as_str());
    let items = ctx.store().adjustments(status, LIST_MAX).await?;
    let items: Vec<AdjustmentView> = items.iter().map(AdjustmentView::from_doc).collect();
    let decides = staff.may::<Admins>();
    let me = staff.principal.user_id.clone();
    let body = html! {
        @if staff.may::<Proposers>() {
            form.card #propose method="post" action="/console/adjustments" {
                (layout::csrf(&staff))
                h1 { "Propose an adjustment" }
                p.muted { "Nothing moves until a different admin approves. \"2.5\" credits the wallet, \"-2.5\" debits it, in the asset's units." }
                label for="wallet_id" { "Wallet id" }
                input #wallet_id type="text" name="wallet_id" required maxlength="64" value=(query.wallet_id.as_deref().unwrap_or(""));
                label for="amount" { "Amount" }
                input #amount type="text" name="amount" required maxlength="100" inputmode="decimal" placeholder="-2.5";
                label for="reason" { "Reason (shown to the approver)" }
                input #reason type="text" name="reason" required maxlength="500";
                button #propose-submit type="submit" { "Propose" }
            }
        }
        section.card {
            h2 { "Adjustments: " (shown) }
            nav.tabs {
                @for (code, label) in [("proposed", "Waiting"), ("approved", "Approved"), ("rejected", "Rejected"), ("all", "All")] {
                    a href=(format!("/console/adjustments?status={code}")) class=(if code == shown { "active" } else { "" }) { (label) }
                }
            }
            @if items.is_empty() { p.muted { "None." } }
            @for a in &items {
                article.item id=(format!("adjustment-{}", a.id)) {
                    div.row.spread {
                        div { strong { (a.amount) " " (a.asset) } " " span class=(format!("badge adj-{}", a.status)) { (a.status) } }
                        div.muted { "wallet " a.mono href=(format!("/console/find?q={}", a.wallet_id)) { (layout::short(&a.wallet_id)) } }
                    }
                    p.cause { (a.reason) }
                    p.muted { "Proposed by " span.mono { (layout::short(&a.proposed_by)) } " at " (layout::when(&a.proposed_at)) }
                    @if let (Some(by), Some(at)) = (&a.decided_by, &a.decided_at) {
                        p.muted { "Decided by " span.mono { (layout::short(by)) } " at " (layout::when(at)) ": " (a.decision_reason.as_deref().unwrap_or("")) }
                    }
                    @if let Some(tx) = &a.transaction_id { p { "Posted as " (layout::transaction_link(tx)) } }
                    @if a.status == "proposed" && decides {
                        @if a.proposed_by == me {
                            p.muted { "You proposed it: another admin has to decide." }
                        } @else {
                            form.decide method="post" {
                                (layout::csrf(&staff))
                                label for=(format!("reason-{}", a.id)) { "Decision reason" }
                                input id=(format!("reason-{}", a.id)) type="text" name="reason" required maxlength="500";
                                div.row {
                                    button.approve type="submit" formaction=(format!("/console/adjustments/{}/approve", a.id)) { "Approve" }
                                    button.reject.danger type="submit" formaction=(format!("/console/adjustments/{}/reject", a.id)) { "Reject" }
                                }
                            }
                        }
                    }
                }
            }
            @if items.len() == LIST_MAX as usize { p.muted { "Showing the newest " (LIST_MAX) "." } }
        }
    };
    let notice = Notice::from_code(query.notice.as_deref());
    Ok(layout::respond(layout::page(
        "Adjustments",
        Some(&staff),
        notice,
        body,
    )))
}

#[derive(Deserialize)]
struct ProposeForm {
    wallet_id: String,
    amount: String,
    reason: String,
}

async fn propose(
    State(ctx): State<ApiContext>,
    staff: Staff<Proposers>,
    CsrfForm(form): CsrfForm<ProposeForm>,
) -> ConsoleResult<Response> {
    let request = ProposeAdjustmentRequest {
        wallet_id: form.wallet_id.trim().to_string(),
        amount: form.amount.trim().to_string(),
        reason: form.reason,
    };
    crate::admin::adjustments::propose(&ctx, &staff.principal, request).await?;
    Ok(super::see_other("/console/adjustments?notice=proposed"))
}

async fn approve(
    State(ctx): State<ApiContext>,
    staff: Staff<Admins>,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm<ReasonForm>,
) -> ConsoleResult<Response> {
    let (status, _) = crate::admin::adjustments::approve(&ctx, &staff.principal, &id, &form.reason).await?;
    Ok(super::after_approval(
        status,
        "/console/adjustments?notice=approval_recorded",
        "/console/adjustments?status=approved&notice=approved",
    ))
}

async fn reject(
    State(ctx): State<ApiContext>,
    staff: Staff<Admins>,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm<ReasonForm>,
) -> ConsoleResult<Response> {
    crate::admin::adjustments::reject(&ctx, &staff.principal, &id, &form.reason).await?;
    Ok(super::see_other(
        "/console/adjustments?status=rejected&notice=rejected",
    ))
}
