//! The manual review queue: support and admins see it; only admins approve or reject (with a
//! reason), through the admin API's own decision function.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use coffer_store::support::ReviewDecision;
use maud::html;
use serde::Deserialize;

use super::layout::{self, Notice};
use super::session::{CsrfForm, NoticeQuery, Staff};
use super::ConsoleResult;
use crate::extract::roles::{Admins, ReviewReaders};
use crate::views::TransactionView;
use crate::ApiContext;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/console/reviews", get(queue))
        .route("/console/reviews/{id}/approve", post(approve))
        .route("/console/reviews/{id}/reject", post(reject))
}

/// The most items the queue shows (oldest first: the next one to decide is on top).
const QUEUE_MAX: u32 = 50;

async fn queue(
    State(ctx): State<ApiContext>,
    staff: Staff<ReviewReaders>,
    Query(query): Query<NoticeQuery>,
) -> ConsoleResult<Response> {
    let items = ctx
        .store()
        .transactions_in_state(coffer_domain::TxState::ManualReview, QUEUE_MAX + 1)
        .await?;
    let more = items.len() > QUEUE_MAX as usize;
    let items: Vec<TransactionView> = items
        .iter()
        .take(QUEUE_MAX as usize)
        .map(TransactionView::from_doc)
        .collect();
    let decides = staff.may::<Admins>();
    let body = html! {
        section.card {
            h1 { "Review queue" }
            p.muted {
                "Oldest first. "
                @if decides { "Approving sends a withdrawal on to broadcast; rejecting fails it and releases the hold. The reason is kept with the decision." }
                @else { "Only an admin can approve or reject." }
            }
            @if items.is_empty() { p #empty { "Nothing is waiting for review." } }
            @for t in &items {
                article.item id=(format!("review-{}", t.id)) {
                    div.row.spread {
                        div { strong { (t.kind) " " (t.amount) " " (t.asset) } " " (layout::state_badge(&t.state)) }
                        div { (layout::transaction_link(&t.id)) }
                    }
                    @if let Some(cause) = t.timeline.last().map(|c| c.cause.clone()) { p.cause { (cause) } }
                    p.muted { "Waiting since " (layout::when(&t.updated_at)) }
                    @if decides {
                        form.decide method="post" {
                            (layout::csrf(&staff))
                            label for=(format!("reason-{}", t.id)) { "Reason" }
                            input id=(format!("reason-{}", t.id)) type="text" name="reason" required maxlength="500";
                            div.row {
                                button.approve type="submit" formaction=(format!("/console/reviews/{}/approve", t.id)) { "Approve" }
                                button.reject.danger type="submit" formaction=(format!("/console/reviews/{}/reject", t.id)) { "Reject" }
                            }
                        }
                    }
                }
            }
            @if more { p.muted { "Showing the oldest " (QUEUE_MAX) "; decide these to see the next ones." } }
        }
    };
    let notice = Notice::from_code(query.notice.as_deref());
    Ok(layout::respond(layout::page(
        "Review queue",
        Some(&staff),
        notice,
        body,
    )))
}

#[derive(Deserialize)]
pub struct ReasonForm {
    pub reason: String,
}

async fn approve(
    State(ctx): State<ApiContext>,
    staff: Staff<Admins>,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm<ReasonForm>,
) -> ConsoleResult<Response> {
    let decision = ReviewDecision::Approve;
    let (status, _) =
        crate::admin::reviews::decide_review(&ctx, &staff.principal, &id, &form.reason, decision).await?;
    Ok(super::after_approval(
        status,
        "/console/reviews?notice=approval_recorded",
        "/console/reviews?notice=approved",
    ))
}

async fn reject(
    State(ctx): State<ApiContext>,
    staff: Staff<Admins>,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm<ReasonForm>,
) -> ConsoleResult<Response> {
    let decision = ReviewDecision::Reject;
    crate::admin::reviews::decide_review(&ctx, &staff.principal, &id, &form.reason, decision).await?;
    Ok(super::see_other("/console/reviews?notice=rejected"))
}
