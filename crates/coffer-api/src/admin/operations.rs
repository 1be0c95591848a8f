//! Operations (O1, S5): reconciliation runs and audit-chain verification.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use coffer_store::audit_chain::{actions, AuditVerification, ChainBreak};
use coffer_store::reconcile::ReconciliationRun;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::*;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Cursor, PageLimit, Principal, ValidQuery};
use crate::idempotency::idempotency_key;
use crate::views::time;
use crate::ApiContext;

/// This feature's read routes.
pub fn reads() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(list_reconciliations))
        .routes(routes!(get_reconciliation))
        .routes(routes!(verify_audit))
}

/// This feature's mutating routes (served behind the Idempotency-Key middleware).
pub fn writes() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(run_reconciliation))
}

#[derive(Serialize, ToSchema)]
pub struct CheckView {
    /// balances, postings, custody, stuck_transactions, outbox_lag, audit_chain.
    pub check: String,
    /// ok, mismatch, skipped or error.
    pub status: String,
    pub mismatches: i64,
    pub detail: Option<String>,
    pub duration_ms: i64,
}

#[derive(Serialize, ToSchema)]
pub struct FindingView {
    pub check: String,
    pub kind: String,
    /// The id of what is wrong: account, transaction, asset, outbox event or audit record.
    pub subject: String,
    /// Amounts here are signed integers of smallest units, as strings (`*_atomic`).
    #[schema(value_type = Object)]
    pub details: Value,
}

#[derive(Serialize, ToSchema)]
pub struct ReconciliationView {
    pub id: String,
    pub trigger: String,
    pub requested_by: Option<String>,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: i64,
    pub mismatches: i64,
    pub checks: Vec<CheckView>,
    /// Present on a single run (`GET /v1/admin/reconciliations/{id}` and `POST`), absent in lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub findings: Option<Vec<FindingView>>,
    pub findings_truncated: bool,
}

impl ReconciliationView {
    pub(crate) fn from_run(run: &ReconciliationRun, with_findings: bool) -> Self {
        let status = |s| {
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        ReconciliationView {
            id: run.id.clone(),
            trigger: run.trigger.clone(),
            requested_by: run.requested_by.clone(),
            started_at: time(&run.started_at),
            finished_at: time(&run.finished_at),
            duration_ms: run.duration_ms,
            mismatches: run.mismatches,
            checks: run
                .checks
                .iter()
                .map(|c| CheckView {
                    check: c.check.clone(),
                    status: status(c.status),
                    mismatches: c.mismatches,
                    detail: c.detail.clone(),
                    duration_ms: c.duration_ms,
                })
                .collect(),
            findings: with_findings.then(|| {
                run.findings
                    .iter()
                    .map(|f| FindingView {
                        check: f.check.clone(),
                        kind: f.kind.clone(),
                        subject: f.subject.clone(),
                        details: f.details.clone(),
                    })
                    .collect()
            }),
            findings_truncated: run.findings_truncated,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ReconciliationPage {
    pub items: Vec<ReconciliationView>,
    pub next_cursor: Option<String>,
}

/// Run a reconciliation now and return its stored report (engineering, admin).
#[utoipa::path(post, path = "/v1/admin/reconciliations", tag = "admin",
    params(("Idempotency-Key" = String, Header, description = "Required")),
    responses((status = 201, body = ReconciliationView), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn run_reconciliation(
    State(ctx): State<ApiContext>,
    principal: Authorized<Operators>,
    headers: HeaderMap,
) -> ApiResult<(StatusCode, Json<ReconciliationView>)> {
    idempotency_key(&headers)?;
    let run = run_now(&ctx, &principal).await?;
    Ok((
        StatusCode::CREATED,
        Json(ReconciliationView::from_run(&run, true)),
    ))
}

/// Audits the request, then runs a reconciliation (the API and the console both call it).
pub(crate) async fn run_now(ctx: &ApiContext, principal: &Principal) -> ApiResult<ReconciliationRun> {
    audit(
        ctx,
        principal,
        actions::RECONCILIATION_REQUESTED,
        "reconciliation",
        json!({}),
    )
    .await?;
    Ok(ctx
        .reconciler()
        .run(ctx.store(), "api", Some(&principal.user_id))
        .await?)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<String>, format = Uuid)]
    pub cursor: Option<Cursor>,
    /// 1 to 100; default 20.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<PageLimit>,
}

/// Reconciliation runs, newest first, without findings (engineering, admin).
#[utoipa::path(get, path = "/v1/admin/reconciliations", tag = "admin", params(RunsQuery),
    responses((status = 200, body = ReconciliationPage), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn list_reconciliations(
    State(ctx): State<ApiContext>,
    _caller: Authorized<Operators>,
    ValidQuery(query): ValidQuery<RunsQuery>,
) -> ApiResult<Json<ReconciliationPage>> {
    let page = ctx
        .store()
        .reconciliation_runs(
            query.cursor.as_ref().map(Cursor::as_str),
            PageLimit::or(query.limit, 20),
        )
        .await?;
    Ok(Json(ReconciliationPage {
        items: page
            .items
            .iter()
            .map(|r| ReconciliationView::from_run(r, false))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One reconciliation run with its findings (engineering, admin).
#[utoipa::path(get, path = "/v1/admin/reconciliations/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = ReconciliationView), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_reconciliation(
    State(ctx): State<ApiContext>,
    _caller: Authorized<Operators>,
    Path(id): Path<String>,
) -> ApiResult<Json<ReconciliationView>> {
    let run = ctx
        .store()
        .reconciliation_run(&id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(ReconciliationView::from_run(&run, true)))
}

#[derive(Serialize, ToSchema)]
pub struct ChainBreakView {
    /// The audit shard (0..16) whose chain breaks.
    pub shard: i32,
    pub seq: i64,
    /// The record as stored (empty for a cut tail).
    pub id: String,
    /// edited, deleted, inserted or cut_tail.
    pub kind: String,
    pub detail: String,
}

impl ChainBreakView {
    fn from_break(b: &ChainBreak) -> Self {
        ChainBreakView {
            shard: b.shard,
            seq: b.seq,
            id: b.id.clone(),
            kind: b.kind.as_str().to_string(),
            detail: b.detail.clone(),
        }
    }
}

/// One audit shard: its last record that verifies (the head to export or compare).
#[derive(Serialize, ToSchema)]
pub struct ShardHeadView {
    pub shard: i32,
    pub records_checked: u64,
    pub head_seq: i64,
    /// HMAC-SHA256 (hex) of the shard's last intact record.
    pub head_mac: String,
    pub first_break: Option<ChainBreakView>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditVerificationView {
    pub valid: bool,
    pub records_checked: u64,
    /// Every shard's head and first break, by shard.
    pub shards: Vec<ShardHeadView>,
    /// The first break of the lowest broken shard.
    pub first_break: Option<ChainBreakView>,
}

impl AuditVerificationView {
    pub fn from_report(report: &AuditVerification) -> Self {
        let shards = report
            .shards
            .iter()
            .map(|s| ShardHeadView {
                shard: s.shard,
                records_checked: s.records_checked,
                head_seq: s.head_seq,
                head_mac: s.head_mac.clone(),
                first_break: s.first_break.as_ref().map(ChainBreakView::from_break),
            })
            .collect();
        AuditVerificationView {
            valid: report.valid(),
            records_checked: report.records_checked,
            shards,
            first_break: report.first_break.as_ref().map(ChainBreakView::from_break),
        }
    }
}

/// Verify every audit shard's MAC chain, name the first broken record, and give each shard's head (engineering, admin).
#[utoipa::path(get, path = "/v1/admin/audit/verify", tag = "admin",
    responses((status = 200, body = AuditVerificationView), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn verify_audit(
    State(ctx): State<ApiContext>,
    _caller: Authorized<Operators>,
) -> ApiResult<Json<AuditVerificationView>> {
    let report = verify(&ctx).await?;
    Ok(Json(AuditVerificationView::from_report(&report)))
}

/// Verifies the audit chains and records the outcome in the metrics (the API and the console).
pub(crate) async fn verify(ctx: &ApiContext) -> ApiResult<AuditVerification> {
    let report = ctx.store().verify_audit(None).await?;
    ctx.reconciler().metrics.audit_chain_verified(report.valid());
    Ok(report)
}
