//! Operations (O1, S5): reconciliation runs and audit-chain verification.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use coffer_store::audit_chain::{actions, AuditVerification, ChainBreak};
use coffer_store::reconcile::{IncrementalSummary, ReconciliationRun, RunMode};
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
    /// balances, postings, custody, solvency, stuck_transactions, outbox_lag, audit_chain.
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
    /// `full` (every ledger entry) or `incremental` (each account from its checkpoint on).
    pub mode: String,
    /// What an incremental run read; absent on full runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalView>,
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
    /// Reserves read from the chain against the latest published liabilities, per asset compared
    /// (issue 17; docs/solvency.md). Empty without a chain source or a published statement.
    pub solvency: Vec<SolvencyView>,
}

/// How much an incremental run read: its cost grows with these, not with the ledger.
#[derive(Serialize, ToSchema)]
pub struct IncrementalView {
    pub accounts_read: i64,
    /// Accounts whose version moved past (or whose balances differ from) their checkpoint.
    pub accounts_changed: i64,
    pub entries_read: i64,
    pub transactions_checked: i64,
}

impl From<IncrementalSummary> for IncrementalView {
    fn from(s: IncrementalSummary) -> Self {
        IncrementalView {
            accounts_read: s.accounts_read,
            accounts_changed: s.accounts_changed,
            entries_read: s.entries_read,
            transactions_checked: s.transactions_checked,
        }
    }
}

/// One asset's reserves − liabilities. Amounts in smallest units as strings, and in whole units.
#[derive(Serialize, ToSchema)]
pub struct SolvencyView {
    pub asset: String,
    /// What the platform's hot wallets and deposit addresses hold at `block_number`.
    #[schema(example = "12500000000000000000")]
    pub reserves_atomic: String,
    /// The total of statement `statement_id` (`GET /v1/liabilities/{asset}`).
    pub liabilities_atomic: String,
    /// `reserves − liabilities`; negative when the platform is short.
    #[schema(example = "-1000")]
    pub margin_atomic: String,
    /// The same margin in whole units, e.g. `"-0.5"`.
    pub margin: String,
    pub statement_id: String,
    pub snapshot_at: String,
    pub block_number: Option<i64>,
}

impl SolvencyView {
    fn from_line(line: &coffer_store::reconcile::SolvencyLine) -> Self {
        let (magnitude, negative) = match line.margin_atomic.strip_prefix('-') {
            Some(rest) => (rest, true),
            None => (line.margin_atomic.as_str(), false),
        };
        let margin = coffer_domain::Amount::parse_atomic(magnitude)
            .map(|a| coffer_domain::amount::signed_decimal_string(&a, negative, line.decimals))
            .unwrap_or_default();
        SolvencyView {
            asset: line.asset.clone(),
            reserves_atomic: line.reserves_atomic.clone(),
            liabilities_atomic: line.liabilities_atomic.clone(),
            margin_atomic: line.margin_atomic.clone(),
            margin,
            statement_id: line.statement_id.clone(),
            snapshot_at: time(&line.snapshot_at),
            block_number: line.block_number,
        }
    }
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
            mode: match run.mode {
                RunMode::Full => "full".into(),
                RunMode::Incremental => "incremental".into(),
            },
            incremental: run.incremental.map(IncrementalView::from),
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
            solvency: run.solvency.iter().map(SolvencyView::from_line).collect(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ReconciliationPage {
    pub items: Vec<ReconciliationView>,
    pub next_cursor: Option<String>,
}

/// The ledger pass of an on-demand run.
#[derive(Deserialize, Clone, Copy, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModeParam {
    /// Every ledger entry (rewrites every agreeing account's checkpoint).
    Full,
    /// From each account's checkpoint on (full anyway while no checkpoint exists).
    Incremental,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunNowQuery {
    /// `full` or `incremental`; absent: by the schedule (`COFFER_RECONCILE_FULL_INTERVAL_SECONDS`).
    #[param(inline)]
    pub mode: Option<ModeParam>,
}

/// Run a reconciliation now and return its stored report (engineering, admin).
#[utoipa::path(post, path = "/v1/admin/reconciliations", tag = "admin",
    params(("Idempotency-Key" = String, Header, description = "Required"), RunNowQuery),
    responses((status = 201, body = ReconciliationView), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn run_reconciliation(
    State(ctx): State<ApiContext>,
    principal: Authorized<Operators>,
    headers: HeaderMap,
    ValidQuery(query): ValidQuery<RunNowQuery>,
) -> ApiResult<(StatusCode, Json<ReconciliationView>)> {
    idempotency_key(&headers)?;
    let mode = query.mode.map(|m| match m {
        ModeParam::Full => RunMode::Full,
        ModeParam::Incremental => RunMode::Incremental,
    });
    let run = run_now(&ctx, &principal, mode).await?;
    Ok((
        StatusCode::CREATED,
        Json(ReconciliationView::from_run(&run, true)),
    ))
}

/// Audits the request, then runs a reconciliation (the API and the console both call it);
/// `mode` None: the schedule's pass.
pub(crate) async fn run_now(
    ctx: &ApiContext,
    principal: &Principal,
    mode: coffer_store::reconcile::ModeRequest,
) -> ApiResult<ReconciliationRun> {
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
        .run_as(ctx.store(), "api", Some(&principal.user_id), mode)
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
