//! Support and admin API under `/v1/admin` (O1, O2, S2, S5).
//!
//! Roles: support reads user data; finance proposes adjustments; admin approves adjustments and
//! decides reviews (and may read everything); engineering runs operations (reconciliations,
//! audit verification). Every refusal is a 403 before anything is read or written; every action
//! and every read of user data is appended to the audit log (ids only).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use coffer_domain::amount::signed_decimal_string;
use coffer_domain::Amount;
use coffer_store::adjustments::{AdjustmentDoc, AdjustmentStatus, Direction, NewAdjustment};
use coffer_store::audit_chain::{actions, AuditVerification};
use coffer_store::reconcile::ReconciliationRun;
use coffer_store::support::ReviewDecision;
use coffer_store::{OutboxDoc, Role};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{adjustment_error, ApiError, ApiResult, Problem};
use crate::extract::{Principal, ValidJson, ValidQuery};
use crate::idempotency::idempotency_key;
use crate::views::{LedgerEntryView, TransactionView, WalletView};
use crate::ApiContext;

/// Who may read user data (wallets, transaction stories).
const SUPPORT_READERS: &[Role] = &[Role::Support, Role::Finance, Role::Admin];
/// Who may propose adjustments (an admin's own proposal still needs another admin).
const PROPOSERS: &[Role] = &[Role::Finance, Role::Admin];
/// Who may see adjustments.
const ADJUSTMENT_READERS: &[Role] = &[Role::Finance, Role::Admin];
/// Who runs and reads operations.
const OPERATORS: &[Role] = &[Role::Engineering, Role::Admin];

/// Read routes of the admin API.
pub fn reads() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(user_wallets))
        .routes(routes!(transaction_story))
        .routes(routes!(list_adjustments))
        .routes(routes!(get_adjustment))
        .routes(routes!(list_reviews))
        .routes(routes!(list_reconciliations))
        .routes(routes!(get_reconciliation))
        .routes(routes!(verify_audit))
}

/// Mutating routes of the admin API (served behind the Idempotency-Key middleware).
pub fn writes() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(propose_adjustment))
        .routes(routes!(approve_adjustment))
        .routes(routes!(reject_adjustment))
        .routes(routes!(approve_review))
        .routes(routes!(reject_review))
        .routes(routes!(run_reconciliation))
}

use crate::views::time;

/// A decision's reason: required, 1 to 500 characters. Kept with the object, never in logs.
fn reason(text: &str) -> ApiResult<String> {
    let text = text.trim();
    let length = text.chars().count();
    if length == 0 || length > coffer_store::adjustments::REASON_MAX_CHARS {
        return Err(ApiError::invalid_field(
            "invalid_reason",
            "reason",
            "1 to 500 characters",
        ));
    }
    Ok(text.to_string())
}

/// Appends to the audit log; the caller's request fails if the trail cannot be written.
async fn audit(
    ctx: &ApiContext,
    principal: &Principal,
    action: &str,
    subject: &str,
    details: Value,
) -> ApiResult<()> {
    ctx.store()
        .audit(&principal.user_id, action, subject, details)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------- support

#[derive(Serialize, ToSchema)]
pub struct UserWallets {
    pub user_id: String,
    /// One per asset, sorted by asset.
    pub wallets: Vec<WalletView>,
}

/// A user's wallets by asset (support, finance, admin).
#[utoipa::path(get, path = "/v1/admin/users/{id}/wallets", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = UserWallets), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn user_wallets(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<UserWallets>> {
    principal.require(SUPPORT_READERS)?;
    ctx.store().user_by_id(&id).await?.ok_or(ApiError::NotFound)?;
    audit(&ctx, &principal, actions::USER_WALLETS_VIEWED, &id, json!({})).await?;
    let mut wallets = ctx.store().wallets_of_user(&id).await?;
    wallets.sort_by(|a, b| a.asset.cmp(&b.asset));
    let wallets = wallets
        .iter()
        .map(WalletView::from_doc)
        .collect::<ApiResult<_>>()?;
    Ok(Json(UserWallets { user_id: id, wallets }))
}

#[derive(Serialize, ToSchema)]
pub struct EventView {
    pub id: String,
    pub event_type: String,
    pub wallet_id: String,
    pub created_at: String,
    /// When the outbox publisher relayed it; null while unpublished.
    pub published_at: Option<String>,
    #[schema(value_type = Object)]
    pub data: Value,
}

impl EventView {
    fn from_doc(event: &OutboxDoc) -> Self {
        EventView {
            id: event.id.clone(),
            event_type: event.event_type.clone(),
            wallet_id: event.subject.clone(),
            created_at: time(&event.created_time()),
            published_at: event.published_time().as_ref().map(time),
            data: event.data_json(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TransactionStoryView {
    /// The transaction with its timeline (state changes) and every ledger entry, on every account.
    pub transaction: TransactionView,
    pub initiated_by: String,
    /// Everything else recorded on the transaction by other roles: chain references
    /// (`chain_tx_hash`, block, log index), confirmations, risk flags, the review decision.
    #[schema(value_type = Object)]
    pub details: Value,
    /// The newest real-time event written for it (null if none).
    pub last_event: Option<EventView>,
}

/// Fields of the transaction record the view already shows.
const SHOWN_FIELDS: &[&str] = &[
    "_id",
    "kind",
    "state",
    "asset",
    "decimals",
    "amount",
    "ledger_key",
    "participants",
    "from_wallet_id",
    "to_wallet_id",
    "external_reference",
    "destination",
    "initiated_by",
    "timeline",
    "created_at",
    "updated_at",
];

/// A transaction's whole story (support, finance, admin).
#[utoipa::path(get, path = "/v1/admin/transactions/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = TransactionStoryView), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn transaction_story(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<TransactionStoryView>> {
    principal.require(SUPPORT_READERS)?;
    let story = ctx
        .store()
        .transaction_story(&id)
        .await?
        .ok_or(ApiError::NotFound)?;
    audit(&ctx, &principal, actions::TRANSACTION_VIEWED, &id, json!({})).await?;
    let tx = &story.transaction;
    let mut view = TransactionView::from_doc(tx);
    view.ledger_entries = Some(
        story
            .entries
            .iter()
            .map(|e| LedgerEntryView::from_doc(e, tx.decimals))
            .collect::<ApiResult<_>>()?,
    );
    let mut details = story.raw.clone();
    if let Some(fields) = details.as_object_mut() {
        for field in SHOWN_FIELDS {
            fields.remove(*field);
        }
    }
    Ok(Json(TransactionStoryView {
        transaction: view,
        initiated_by: tx.initiated_by.clone(),
        details,
        last_event: story.last_event.as_ref().map(EventView::from_doc),
    }))
}

// ------------------------------------------------------------------------------ adjustments

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposeAdjustmentRequest {
    pub wallet_id: String,
    /// Signed decimal string in the asset's units: "2.5" credits the wallet, "-2.5" debits it.
    pub amount: String,
    /// Why (1 to 500 characters); shown to the approver.
    pub reason: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// Why (1 to 500 characters).
    pub reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct AdjustmentView {
    pub id: String,
    pub wallet_id: String,
    pub asset: String,
    pub decimals: u8,
    /// Signed from the wallet's point of view: "-2.5" debits it.
    pub amount: String,
    /// proposed, approved or rejected.
    pub status: String,
    pub reason: String,
    pub proposed_by: String,
    pub proposed_at: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub decision_reason: Option<String>,
    /// The posted adjustment transaction, once approved.
    pub transaction_id: Option<String>,
}

impl AdjustmentView {
    fn from_doc(a: &AdjustmentDoc) -> Self {
        AdjustmentView {
            id: a.id.clone(),
            wallet_id: a.wallet_id.clone(),
            asset: a.asset.clone(),
            decimals: a.decimals,
            amount: signed_decimal_string(&a.amount, a.direction == Direction::Debit, a.decimals),
            status: a.status.as_str().to_string(),
            reason: a.reason.clone(),
            proposed_by: a.proposed_by.clone(),
            proposed_at: time(&a.proposed_at),
            decided_by: a.decided_by.clone(),
            decided_at: a.decided_at.as_ref().map(time),
            decision_reason: a.decision_reason.clone(),
            transaction_id: a.transaction_id.clone(),
        }
    }
}

/// Parses "2.5" / "+2.5" / "-2.5" with the wallet's decimals.
fn signed_amount(text: &str, decimals: u8) -> ApiResult<(Amount, Direction)> {
    let (direction, magnitude) = match text.strip_prefix('-') {
        Some(rest) => (Direction::Debit, rest),
        None => (Direction::Credit, text.strip_prefix('+').unwrap_or(text)),
    };
    let amount = Amount::parse_positive(magnitude, decimals).map_err(|e| ApiError::amount(e, "amount"))?;
    if amount > coffer_domain::amount::ledger_max() {
        return Err(ApiError::invalid_field(
            "amount_too_large",
            "amount",
            "the amount is above the ledger's limit",
        ));
    }
    Ok((amount, direction))
}

/// Propose an adjustment of a user wallet (finance, admin). Nothing moves until another admin approves.
#[utoipa::path(post, path = "/v1/admin/adjustments", tag = "admin", request_body = ProposeAdjustmentRequest,
    params(("Idempotency-Key" = String, Header, description = "Required")),
    responses((status = 201, body = AdjustmentView), (status = 400, body = Problem), (status = 403, body = Problem),
              (status = 404, description = "wallet_not_found", body = Problem)),
    security(("bearer" = [])))]
pub async fn propose_adjustment(
    State(ctx): State<ApiContext>,
    principal: Principal,
    headers: HeaderMap,
    ValidJson(body): ValidJson<ProposeAdjustmentRequest>,
) -> ApiResult<(StatusCode, Json<AdjustmentView>)> {
    principal.require(PROPOSERS)?;
    idempotency_key(&headers)?;
    let reason = reason(&body.reason)?;
    let wallet = ctx.store().wallet_by_id(&body.wallet_id).await?;
    let wallet = wallet
        .filter(|w| w.user_id.is_some())
        .ok_or(ApiError::UnknownReference {
            code: "wallet_not_found",
            detail: "wallet_id does not name a user wallet".into(),
        })?;
    let (amount, direction) = signed_amount(&body.amount, wallet.decimals)?;
    let proposal = NewAdjustment {
        wallet_id: wallet.id,
        amount,
        direction,
        reason,
        proposed_by: principal.user_id.clone(),
    };
    let adjustment = ctx.store().propose_adjustment(proposal).await?;
    let direction = if direction == Direction::Credit {
        "credit"
    } else {
        "debit"
    };
    let details = json!({ "wallet_id": &adjustment.wallet_id, "direction": direction, "amount_atomic": amount.to_string() });
    audit(
        &ctx,
        &principal,
        actions::ADJUSTMENT_PROPOSED,
        &adjustment.id,
        details,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(AdjustmentView::from_doc(&adjustment))))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentQuery {
    /// proposed, approved or rejected; all when absent.
    pub status: Option<String>,
    /// 1 to 100; default 50.
    pub limit: Option<u32>,
}

/// Adjustments, newest first (finance, admin).
#[utoipa::path(get, path = "/v1/admin/adjustments", tag = "admin", params(AdjustmentQuery),
    responses((status = 200, body = Vec<AdjustmentView>), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn list_adjustments(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ValidQuery(query): ValidQuery<AdjustmentQuery>,
) -> ApiResult<Json<Vec<AdjustmentView>>> {
    principal.require(ADJUSTMENT_READERS)?;
    let status = match query.status.as_deref() {
        None => None,
        Some("proposed") => Some(AdjustmentStatus::Proposed),
        Some("approved") => Some(AdjustmentStatus::Approved),
        Some("rejected") => Some(AdjustmentStatus::Rejected),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "status is proposed, approved or rejected",
            ))
        }
    };
    let items = ctx.store().adjustments(status, query.limit.unwrap_or(50)).await?;
    Ok(Json(items.iter().map(AdjustmentView::from_doc).collect()))
}

/// One adjustment (finance, admin).
#[utoipa::path(get, path = "/v1/admin/adjustments/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = AdjustmentView), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_adjustment(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<AdjustmentView>> {
    principal.require(ADJUSTMENT_READERS)?;
    let adjustment = ctx.store().adjustment(&id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(AdjustmentView::from_doc(&adjustment)))
}

#[derive(Serialize, ToSchema)]
pub struct ApprovedAdjustment {
    pub adjustment: AdjustmentView,
    /// The balanced adjustment posted against the asset's suspense account.
    pub transaction: TransactionView,
}

/// Approve and post an adjustment (admin, not its proposer).
#[utoipa::path(post, path = "/v1/admin/adjustments/{id}/approve", tag = "admin", params(("id" = String, Path),
        ("Idempotency-Key" = String, Header, description = "Required")), request_body = DecisionRequest,
    responses((status = 200, body = ApprovedAdjustment),
              (status = 403, description = "forbidden, self_approval", body = Problem),
              (status = 404, body = Problem), (status = 409, description = "adjustment_not_proposed", body = Problem),
              (status = 422, description = "insufficient_funds", body = Problem)),
    security(("bearer" = [])))]
pub async fn approve_adjustment(
    State(ctx): State<ApiContext>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<DecisionRequest>,
) -> ApiResult<Json<ApprovedAdjustment>> {
    principal.require(&[Role::Admin])?;
    idempotency_key(&headers)?;
    let reason = reason(&body.reason)?;
    let (adjustment, tx) = ctx
        .store()
        .approve_adjustment(&id, &principal.user_id, &reason)
        .await
        .map_err(adjustment_error)?;
    let details = json!({ "wallet_id": &adjustment.wallet_id, "transaction_id": &tx.id });
    audit(&ctx, &principal, actions::ADJUSTMENT_APPROVED, &id, details).await?;
    Ok(Json(ApprovedAdjustment {
        adjustment: AdjustmentView::from_doc(&adjustment),
        transaction: TransactionView::from_doc(&tx),
    }))
}

/// Reject an adjustment (admin); nothing moves.
#[utoipa::path(post, path = "/v1/admin/adjustments/{id}/reject", tag = "admin", params(("id" = String, Path),
        ("Idempotency-Key" = String, Header, description = "Required")), request_body = DecisionRequest,
    responses((status = 200, body = AdjustmentView), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, description = "adjustment_not_proposed", body = Problem)),
    security(("bearer" = [])))]
pub async fn reject_adjustment(
    State(ctx): State<ApiContext>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<DecisionRequest>,
) -> ApiResult<Json<AdjustmentView>> {
    principal.require(&[Role::Admin])?;
    idempotency_key(&headers)?;
    let reason = reason(&body.reason)?;
    let adjustment = ctx
        .store()
        .reject_adjustment(&id, &principal.user_id, &reason)
        .await
        .map_err(adjustment_error)?;
    audit(
        &ctx,
        &principal,
        actions::ADJUSTMENT_REJECTED,
        &id,
        json!({ "wallet_id": &adjustment.wallet_id }),
    )
    .await?;
    Ok(Json(AdjustmentView::from_doc(&adjustment)))
}

// ---------------------------------------------------------------------------- manual review

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    /// 1 to 100; default 50.
    pub limit: Option<u32>,
}

/// Transactions waiting in manual review, oldest first (support, admin).
#[utoipa::path(get, path = "/v1/admin/reviews", tag = "admin", params(LimitQuery),
    responses((status = 200, body = Vec<TransactionView>), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn list_reviews(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ValidQuery(query): ValidQuery<LimitQuery>,
) -> ApiResult<Json<Vec<TransactionView>>> {
    principal.require(&[Role::Support, Role::Admin])?;
    let limit = query
        .limit
        .unwrap_or(50)
        .clamp(1, coffer_store::queries::PAGE_LIMIT_MAX);
    let items = ctx
        .store()
        .transactions_in_state(coffer_domain::TxState::ManualReview, limit)
        .await?;
    Ok(Json(items.iter().map(TransactionView::from_doc).collect()))
}

async fn decide(
    ctx: &ApiContext,
    principal: &Principal,
    headers: &HeaderMap,
    id: &str,
    body: DecisionRequest,
    decision: ReviewDecision,
) -> ApiResult<Json<TransactionView>> {
    principal.require(&[Role::Admin])?;
    idempotency_key(headers)?;
    let reason = reason(&body.reason)?;
    let tx = ctx
        .store()
        .decide_review(id, decision, &principal.user_id, &reason)
        .await?;
    let action = match decision {
        ReviewDecision::Approve => actions::REVIEW_APPROVED,
        ReviewDecision::Reject => actions::REVIEW_REJECTED,
    };
    audit(ctx, principal, action, id, json!({ "state": tx.state.as_str() })).await?;
    Ok(Json(TransactionView::from_doc(&tx)))
}

/// Approve a withdrawal in manual review: it goes on to broadcast (admin).
#[utoipa::path(post, path = "/v1/admin/reviews/{id}/approve", tag = "admin", params(("id" = String, Path),
        ("Idempotency-Key" = String, Header, description = "Required")), request_body = DecisionRequest,
    responses((status = 200, body = TransactionView), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, description = "state_conflict: not in manual review", body = Problem),
              (status = 422, description = "not_supported: not a withdrawal", body = Problem)),
    security(("bearer" = [])))]
pub async fn approve_review(
    State(ctx): State<ApiContext>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<DecisionRequest>,
) -> ApiResult<Json<TransactionView>> {
    decide(&ctx, &principal, &headers, &id, body, ReviewDecision::Approve).await
}

/// Reject a withdrawal in manual review: it fails and its hold is released (admin).
#[utoipa::path(post, path = "/v1/admin/reviews/{id}/reject", tag = "admin", params(("id" = String, Path),
        ("Idempotency-Key" = String, Header, description = "Required")), request_body = DecisionRequest,
    responses((status = 200, body = TransactionView), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, description = "state_conflict: not in manual review", body = Problem),
              (status = 422, description = "not_supported: not a withdrawal", body = Problem)),
    security(("bearer" = [])))]
pub async fn reject_review(
    State(ctx): State<ApiContext>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<DecisionRequest>,
) -> ApiResult<Json<TransactionView>> {
    decide(&ctx, &principal, &headers, &id, body, ReviewDecision::Reject).await
}

// ---------------------------------------------------------------------------- operations

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
    fn from_run(run: &ReconciliationRun, with_findings: bool) -> Self {
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
    principal: Principal,
    headers: HeaderMap,
) -> ApiResult<(StatusCode, Json<ReconciliationView>)> {
    principal.require(OPERATORS)?;
    idempotency_key(&headers)?;
    audit(
        &ctx,
        &principal,
        actions::RECONCILIATION_REQUESTED,
        "reconciliation",
        json!({}),
    )
    .await?;
    let run = ctx
        .reconciler()
        .run(ctx.store(), "api", Some(&principal.user_id))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ReconciliationView::from_run(&run, true)),
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1 to 100; default 20.
    pub limit: Option<u32>,
}

/// Reconciliation runs, newest first, without findings (engineering, admin).
#[utoipa::path(get, path = "/v1/admin/reconciliations", tag = "admin", params(RunsQuery),
    responses((status = 200, body = ReconciliationPage), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn list_reconciliations(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ValidQuery(query): ValidQuery<RunsQuery>,
) -> ApiResult<Json<ReconciliationPage>> {
    principal.require(OPERATORS)?;
    let page = ctx
        .store()
        .reconciliation_runs(query.cursor.as_deref(), query.limit.unwrap_or(20))
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
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<ReconciliationView>> {
    principal.require(OPERATORS)?;
    let run = ctx
        .store()
        .reconciliation_run(&id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(ReconciliationView::from_run(&run, true)))
}

#[derive(Serialize, ToSchema)]
pub struct ChainBreakView {
    pub seq: i64,
    pub id: String,
    /// edited, deleted or inserted.
    pub kind: String,
    pub detail: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuditVerificationView {
    pub valid: bool,
    pub records_checked: u64,
    pub head_seq: Option<i64>,
    pub head_hash: Option<String>,
    /// The first record where the chain breaks.
    pub first_break: Option<ChainBreakView>,
}

impl AuditVerificationView {
    pub fn from_report(report: &AuditVerification) -> Self {
        AuditVerificationView {
            valid: report.valid(),
            records_checked: report.records_checked,
            head_seq: report.head_seq,
            head_hash: report.head_hash.clone(),
            first_break: report.first_break.as_ref().map(|b| ChainBreakView {
                seq: b.seq,
                id: b.id.clone(),
                kind: b.kind.as_str().to_string(),
                detail: b.detail.clone(),
            }),
        }
    }
}

/// Walk the audit log's hash chain and name the first broken record (engineering, admin).
#[utoipa::path(get, path = "/v1/admin/audit/verify", tag = "admin",
    responses((status = 200, body = AuditVerificationView), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn verify_audit(
    State(ctx): State<ApiContext>,
    principal: Principal,
) -> ApiResult<Json<AuditVerificationView>> {
    principal.require(OPERATORS)?;
    let report = ctx.store().verify_audit().await?;
    ctx.reconciler().metrics.audit_chain_verified(report.valid());
    Ok(Json(AuditVerificationView::from_report(&report)))
}
