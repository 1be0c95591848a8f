//! Reconciliation runs (list a page at a time, one run's findings, run now) and audit-chain
//! verification, for engineering and admins.
//!
//! Both can take a while, and the console has no script, so each shows that it is running with a
//! page that refreshes itself: "run now" starts the run in the background (audited first, as the
//! API's) and its page reloads until the run is stored; "verify" shows a "verifying" page whose
//! refresh loads the result (the browser keeps showing it until the result arrives).

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use maud::html;
use serde::Deserialize;

use super::layout::{self, Notice};
use super::session::{CsrfForm, Staff};
use super::{ConsoleError, ConsoleResult};
use crate::admin::operations::{AuditVerificationView, ReconciliationView};
use crate::error::ApiError;
use crate::extract::roles::Operators;
use crate::extract::Cursor;
use crate::ApiContext;

pub fn router() -> Router<ApiContext> {
    Router::new()
        .route("/console/reconciliations", get(runs).post(run_now))
        .route("/console/reconciliations/{id}", get(run_page))
        .route("/console/audit", get(audit_page))
        .route("/console/audit/verifying", get(verifying))
        .route("/console/audit/result", get(audit_result))
}

/// Runs per page of the list.
const RUNS_PER_PAGE: u32 = 20;
/// Seconds between reloads of a page waiting for a run.
const REFRESH_SECONDS: u32 = 2;
/// How long a page waits for a requested run before it says to look at the logs.
const WAIT_SECONDS_MAX: i64 = 600;

#[derive(Deserialize)]
struct RunsQuery {
    cursor: Option<String>,
    /// Set by "run now": the request's time (Unix ms); the page waits for a run of the caller's
    /// started since.
    waiting: Option<i64>,
}

fn cursor_of(text: Option<&str>) -> ConsoleResult<Option<Cursor>> {
    #[derive(Deserialize)]
    struct CursorOnly {
        cursor: Cursor,
    }
    match text {
        None | Some("") => Ok(None),
        Some(text) => crate::extract::parse_query::<CursorOnly>(&format!("cursor={text}"))
            .map(|c| Some(c.cursor))
            .map_err(|_| ConsoleError::BadForm("the page link is not valid".into())),
    }
}

async fn runs(
    State(ctx): State<ApiContext>,
    staff: Staff<Operators>,
    Query(query): Query<RunsQuery>,
) -> ConsoleResult<Response> {
    let cursor = cursor_of(query.cursor.as_deref())?;
    let page = ctx
        .store()
        .reconciliation_runs(cursor.as_ref().map(Cursor::as_str), RUNS_PER_PAGE)
        .await?;
    let mut refresh = None;
    let mut notice = None;
    let waiting_url;
    if let Some(since_ms) = query.waiting {
        let mine = page.items.iter().find(|r| {
            r.requested_by.as_deref() == Some(staff.principal.user_id.as_str())
                && r.started_at.timestamp_millis() >= since_ms
        });
        let waited_seconds = (chrono::Utc::now().timestamp_millis() - since_ms) / 1000;
        match mine {
            Some(run) => {
                let text = format!(
                    "Your reconciliation finished in {} ms with {} mismatches.",
                    run.duration_ms, run.mismatches
                );
                notice = Some(Notice::ok(text));
            }
            None if waited_seconds > WAIT_SECONDS_MAX => {
                notice = Some(Notice::error(
                    "Your reconciliation has not finished after 10 minutes: ask engineering to check the API's logs, or run it again.",
                ));
            }
            None => {
                waiting_url = format!("/console/reconciliations?waiting={since_ms}");
                refresh = Some((REFRESH_SECONDS, waiting_url.as_str()));
                notice = Some(Notice::ok(format!(
                    "Reconciliation running… ({waited_seconds} s). This page reloads every {REFRESH_SECONDS} s until it finishes."
                )));
            }
        }
    }
    let running = refresh.is_some();
    let views: Vec<ReconciliationView> = page
        .items
        .iter()
        .map(|r| ReconciliationView::from_run(r, false))
        .collect();
    let body = html! {
        section.card {
            div.row.spread {
                h1 { "Reconciliation runs" }
                form method="post" action="/console/reconciliations" {
                    (layout::csrf(&staff))
                    @if running { button #run-now type="submit" disabled { "Running…" } }
                    @else { button #run-now type="submit" { "Run now" } }
                }
            }
            p.muted { "Each run checks cached balances against the ledger, that postings sum to zero, custody on chain, stuck transactions, the outbox and the audit chain." }
            @if views.is_empty() { p.muted { "No runs yet." } }
            @else {
                table #runs {
                    thead { tr { th { "Started" } th { "Trigger" } th.num { "Mismatches" } th.num { "Took" } th { "Run" } } }
                    tbody {
                        @for r in &views {
                            tr {
                                td data-label="Started" { (layout::when(&r.started_at)) }
                                td data-label="Trigger" { (r.trigger) }
                                td.num data-label="Mismatches" {
                                    @if r.mismatches == 0 { span.badge.state-confirmed { "0" } } @else { span.badge.state-failed { (r.mismatches) } }
                                }
                                td.num data-label="Took" { (r.duration_ms) " ms" }
                                td data-label="Run" { a.mono href=(format!("/console/reconciliations/{}", r.id)) { (layout::short(&r.id)) } }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = &page.next_cursor {
                p { a.button href=(format!("/console/reconciliations?cursor={next}")) { "Older runs" } }
            }
        }
    };
    let page = layout::page_with_refresh("Reconciliation", Some(&staff), notice, refresh, body);
    Ok(layout::respond(page))
}

async fn run_now(
    State(ctx): State<ApiContext>,
    staff: Staff<Operators>,
    CsrfForm(_): CsrfForm<serde::de::IgnoredAny>,
) -> ConsoleResult<Response> {
    let since_ms = chrono::Utc::now().timestamp_millis();
    let principal = staff.principal.clone();
    let task_ctx = ctx.clone();
    // In the background, so the page can show that it runs; the API's own function audits the
    // request and stores the run, which the waiting page then finds.
    tokio::spawn(async move {
        if let Err(error) = crate::admin::operations::run_now(&task_ctx, &principal, None).await {
            tracing::error!(code = error.code(), error = %error, "console reconciliation failed");
        }
    });
    Ok(super::see_other(&format!(
        "/console/reconciliations?waiting={since_ms}"
    )))
}

async fn run_page(
    State(ctx): State<ApiContext>,
    staff: Staff<Operators>,
    Path(id): Path<String>,
) -> ConsoleResult<Response> {
    let run = ctx
        .store()
        .reconciliation_run(&id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let view = ReconciliationView::from_run(&run, true);
    let body = html! {
        section.card {
            h1 { "Reconciliation run" }
            dl.facts {
                dt { "Run id" } dd.mono { (view.id) }
                dt { "Started" } dd { (layout::when(&view.started_at)) }
                dt { "Trigger" } dd { (view.trigger) @if let Some(by) = &view.requested_by { " by " span.mono { (layout::short(by)) } } }
                dt { "Took" } dd { (view.duration_ms) " ms" }
                dt { "Mismatches" } dd { (view.mismatches) }
            }
            h2 { "Checks" }
            table {
                thead { tr { th { "Check" } th { "Status" } th.num { "Mismatches" } th { "Detail" } } }
                tbody {
                    @for c in &view.checks {
                        tr {
                            td data-label="Check" { (c.check) }
                            td data-label="Status" { span class=(format!("badge check-{}", c.status)) { (c.status) } }
                            td.num data-label="Mismatches" { (c.mismatches) }
                            td data-label="Detail" { (c.detail.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
            h2 { "Findings" }
            @let findings = view.findings.as_deref().unwrap_or_default();
            @if findings.is_empty() { p.muted { "None: the books agree." } }
            @for f in findings {
                article.item {
                    p { strong { (f.check) ": " (f.kind) } " " span.mono { (f.subject) } }
                    pre { (serde_json::to_string_pretty(&f.details).unwrap_or_default()) }
                }
            }
            @if view.findings_truncated { p.notice.error { "More findings than a run keeps: fix these and run again." } }
            p { a href="/console/reconciliations" { "All runs" } }
        }
    };
    Ok(layout::respond(layout::page(
        "Reconciliation run",
        Some(&staff),
        None,
        body,
    )))
}

async fn audit_page(staff: Staff<Operators>) -> Response {
    let body = html! {
        section.card {
            h1 { "Audit verification" }
            p { "Every sensitive action is appended to a MAC-chained audit log in 16 shards. Verifying re-computes every shard's chain and names the first record that was edited, deleted, inserted or cut." }
            p { a.button #verify href="/console/audit/verifying" { "Verify now" } }
        }
    };
    layout::respond(layout::page("Audit", Some(&staff), None, body))
}

async fn verifying(staff: Staff<Operators>) -> Response {
    let body = html! {
        section.card {
            h1 { "Verifying the audit trail…" }
            p #running { "Reading every record of every shard. The result replaces this page when it is ready; this can take a while on a large log." }
        }
    };
    let refresh = Some((0, "/console/audit/result"));
    layout::respond(layout::page_with_refresh(
        "Verifying",
        Some(&staff),
        None,
        refresh,
        body,
    ))
}

async fn audit_result(State(ctx): State<ApiContext>, staff: Staff<Operators>) -> ConsoleResult<Response> {
    let report = crate::admin::operations::verify(&ctx).await?;
    let view = AuditVerificationView::from_report(&report);
    let notice = if view.valid {
        Notice::ok(format!(
            "The audit trail is intact: {} records verified.",
            view.records_checked
        ))
    } else {
        Notice::error("The audit trail is broken: see the first break below and follow the runbook (docs/runbook.md, audit chain).")
    };
    let body = html! {
        section.card {
            h1 { "Audit verification" }
            @if let Some(b) = &view.first_break {
                p #first-break { strong { "First break: " } "shard " (b.shard) ", record " (b.seq) " (" (b.kind) "): " (b.detail) }
            }
            table #shards {
                thead { tr { th.num { "Shard" } th.num { "Records" } th.num { "Head" } th { "Head MAC" } th { "Status" } } }
                tbody {
                    @for s in &view.shards {
                        tr {
                            td.num data-label="Shard" { (s.shard) }
                            td.num data-label="Records" { (s.records_checked) }
                            td.num data-label="Head" { (s.head_seq) }
                            td.mono data-label="Head MAC" { (layout::short(&s.head_mac)) }
                            td data-label="Status" { @if s.first_break.is_some() { span.badge.state-failed { "broken" } } @else { span.badge.state-confirmed { "intact" } } }
                        }
                    }
                }
            }
            p { a.button href="/console/audit/verifying" { "Verify again" } }
        }
    };
    Ok(layout::respond(layout::page(
        "Audit",
        Some(&staff),
        Some(notice),
        body,
    )))
}
