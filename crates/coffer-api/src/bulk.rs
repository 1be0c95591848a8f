//! Bulk postings for payment rails (issue 18, item 4): up to 1,000 deposit reports in one
//! request, each with its own `external_reference` and outcome.
//!
//! - `atomic: false` — each deposit has its own outcome, exactly as `POST /v1/deposits` would
//!   answer it (credited, credited before, held above the rail's caps, or refused). Every credit
//!   goes to the store's group commit together (`Store::apply_all`): one database transaction per
//!   batch of the writer, not one per deposit.
//! - `atomic: true` — every deposit is credited or none is: one database transaction for all of
//!   them (`Store::apply_atomically`, a batch of its own in the writer). A deposit that would be
//!   refused, or held above the rail's caps, refuses the whole request with its own code, naming it
//!   (`field` / `detail` say `deposits[i]`). A reference credited before is answered as such and
//!   the rest is credited without it, so a repeat of the request credits nothing twice.
//!
//! Each deposit's reference is its ledger key, so money is credited once per reference whatever
//! happens to the request; the request's Idempotency-Key replays the whole answer.

use std::collections::{HashMap, HashSet};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use coffer_domain::plan::{RailDeposit, RailHold};
use coffer_domain::Movement;
use coffer_store::batch::Submission;
use coffer_store::rail_deposits::RailDepositDoc;
use coffer_store::{StoreError, TransactionDoc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::roles::PaymentService;
use crate::extract::{Authorized, Principal, ValidJson};
use crate::idempotency::idempotency_key;
use crate::money::{self, CheckedDeposit, DepositOutcome, DepositRequest, PAYMENT_RAIL};
use crate::ApiContext;

/// The most deposits one bulk request carries.
pub const BULK_ITEMS_MAX: usize = 1000;
/// The largest body a bulk request may have (1,000 deposits of ~200 bytes, with room).
pub const BULK_BODY_LIMIT_BYTES: usize = 512 * 1024;

/// The bulk routes (the `payment` service role).
pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(create_bulk_deposits))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkDepositRequest {
    /// `true`: every deposit is credited or none is (one database transaction); `false`: each
    /// deposit has its own outcome.
    pub atomic: bool,
    /// 1 to 1,000 deposit reports, each with its own `external_reference` (unique in the request).
    pub deposits: Vec<DepositRequest>,
}

/// What one deposit of a bulk request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BulkItemStatus {
    /// Credited by this request.
    Credited,
    /// Its reference was credited before with the same wallet and amount: nothing moved now.
    AlreadyCredited,
    /// Held above the rail's caps for a staff approval (`GET /v1/admin/rail-deposits`).
    Held,
    /// Refused (independent requests only): `code` and `detail` say why; nothing moved.
    Refused,
}

#[derive(Serialize, ToSchema)]
pub struct BulkItemView {
    /// Its position in the request's `deposits`.
    pub index: usize,
    pub external_reference: String,
    pub status: BulkItemStatus,
    /// The credit (credited, already_credited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// The held record (held).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rail_deposit_id: Option<String>,
    /// The stable error code of a refusal (refused): the code `POST /v1/deposits` would answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct BulkDepositView {
    pub atomic: bool,
    /// How many deposits have each status.
    pub credited: usize,
    pub already_credited: usize,
    pub held: usize,
    pub refused: usize,
    /// One per deposit of the request, in its order.
    pub results: Vec<BulkItemView>,
}

/// Report up to 1,000 payment-rail deposits at once (service role `payment` only), atomically or
/// each on its own. Every deposit follows `POST /v1/deposits`'s rules (caps, holds, a reference
/// credited once); see the fields for what `atomic` changes.
#[utoipa::path(post, path = "/v1/deposits/bulk", tag = "money", request_body = BulkDepositRequest,
    params(("Idempotency-Key" = String, Header, description = "Required; the same key replays the stored answer")),
    responses((status = 200, description = "every deposit's outcome (atomic: all credited, or credited before)", body = BulkDepositView),
              (status = 400, description = "invalid_field (no deposits, more than 1,000, a reference twice), or an invalid deposit of an atomic request (field deposits[i]…)", body = Problem),
              (status = 403, description = "forbidden: the payment role only", body = Problem),
              (status = 404, description = "wallet_not_found: a deposit of an atomic request names no user's wallet", body = Problem),
              (status = 409, description = "external_reference_conflict (atomic)", body = Problem),
              (status = 413, description = "body_too_large: above 512 KiB", body = Problem),
              (status = 422, description = "atomic: a deposit would be refused (deposits_disabled, asset_unavailable, balance_limit_exceeded) or held (rail_caps_exceeded); nothing was credited", body = Problem),
              (status = 503, description = "retry_later", body = Problem)),
    security(("bearer" = [])))]
pub async fn create_bulk_deposits(
    State(ctx): State<ApiContext>,
    principal: Authorized<PaymentService>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<BulkDepositRequest>,
) -> ApiResult<Json<BulkDepositView>> {
    idempotency_key(&headers)?;
    check_shape(&body.deposits)?;
    let ids: Vec<&str> = body.deposits.iter().map(|d| d.wallet_id.as_str()).collect();
    let found = money::wallets(&ctx, &ids).await?;
    let checked: Vec<ApiResult<CheckedDeposit>> = body
        .deposits
        .iter()
        .map(|d| money::check_deposit(&ctx, &found, d))
        .collect();
    let references: Vec<&str> = checked
        .iter()
        .filter_map(|c| c.as_ref().ok().map(|d| d.reference.as_str()))
        .collect();
    let held = ctx
        .store()
        .rail_deposits_by_references(PAYMENT_RAIL, &references)
        .await?;
    let results = match body.atomic {
        true => atomic(&ctx, &principal, checked, &held).await?,
        false => independent(&ctx, &principal, checked, &held).await,
    };
    Ok(Json(view(body.atomic, &body.deposits, results)))
}

/// 1 to 1,000 deposits, no reference twice.
fn check_shape(deposits: &[DepositRequest]) -> ApiResult<()> {
    if deposits.is_empty() || deposits.len() > BULK_ITEMS_MAX {
        return Err(ApiError::invalid_field(
            "invalid_field",
            "deposits",
            format!("1 to {BULK_ITEMS_MAX} deposits"),
        ));
    }
    let mut seen = HashSet::with_capacity(deposits.len());
    for (index, deposit) in deposits.iter().enumerate() {
        if !seen.insert(deposit.external_reference.trim()) {
            return Err(ApiError::invalid_field(
                "invalid_field",
                &format!("deposits[{index}].external_reference"),
                "this external_reference is given twice in the request",
            ));
        }
    }
    Ok(())
}

/// A deposit's outcome within the request.
type ItemResult = ApiResult<DepositOutcome>;

/// What a deposit needs next: an answer already (held before, refused), a credit to apply, or a
/// hold to record.
enum Next {
    Answered(ItemResult),
    Credit(Box<Movement>, CheckedDeposit),
    Hold(RailHold, CheckedDeposit),
}

async fn next_step(
    ctx: &ApiContext,
    principal: &Principal,
    deposit: ApiResult<CheckedDeposit>,
    held: &HashMap<String, RailDepositDoc>,
) -> Next {
    let deposit = match deposit {
        Ok(deposit) => deposit,
        Err(error) => return Next::Answered(Err(error)),
    };
    if let Some(record) = held.get(&deposit.reference) {
        return Next::Answered(money::held_outcome(ctx, record, &deposit).await);
    }
    match money::plan_deposit(ctx, principal, &deposit).await {
        Ok(RailDeposit::Credit(movement)) => Next::Credit(movement, deposit),
        Ok(RailDeposit::Hold(cause)) => Next::Hold(cause, deposit),
        Err(error) => Next::Answered(Err(error)),
    }
}

/// Each deposit on its own; the credits together through group commit.
async fn independent(
    ctx: &ApiContext,
    principal: &Principal,
    checked: Vec<ApiResult<CheckedDeposit>>,
    held: &HashMap<String, RailDepositDoc>,
) -> Vec<ItemResult> {
    let mut steps = Vec::with_capacity(checked.len());
    for deposit in checked {
        steps.push(next_step(ctx, principal, deposit, held).await);
    }
    let credits: Vec<Submission> = steps
        .iter()
        .filter_map(|s| match s {
            Next::Credit(movement, _) => Some(Submission::from((**movement).clone())),
            _ => None,
        })
        .collect();
    let mut applied = ctx.store().apply_all(credits).await.into_iter();
    let mut results = Vec::with_capacity(steps.len());
    for step in steps {
        let result = match step {
            Next::Answered(result) => result,
            Next::Credit(_, deposit) => {
                let outcome = applied.next().expect("one outcome per credit");
                credit_outcome(ctx, principal, &deposit, outcome).await
            }
            Next::Hold(cause, deposit) => money::hold(ctx, principal, &deposit, cause).await,
        };
        results.push(result);
    }
    results
}

/// What a credit given to the store came to, as `POST /v1/deposits` answers it: past the rail's
/// daily cap it is held.
async fn credit_outcome(
    ctx: &ApiContext,
    principal: &Principal,
    deposit: &CheckedDeposit,
    outcome: Result<TransactionDoc, StoreError>,
) -> ItemResult {
    match outcome {
        Ok(tx) => Ok(DepositOutcome::Credited(Box::new(tx))),
        Err(StoreError::DuplicateLedgerKey(tx)) => {
            money::same_credit(&tx, deposit)?;
            Ok(DepositOutcome::AlreadyCredited(tx))
        }
        Err(StoreError::LimitExceeded) => money::hold(ctx, principal, deposit, RailHold::DailyLimit).await,
        Err(other) => Err(other.into()),
    }
}

/// A deposit of an atomic request: to credit now, or credited before.
enum Atomic {
    Apply(Box<(Movement, CheckedDeposit)>),
    Done(DepositOutcome),
}

/// Every deposit credited, or none: the first one that would not be refuses the request.
async fn atomic(
    ctx: &ApiContext,
    principal: &Principal,
    checked: Vec<ApiResult<CheckedDeposit>>,
    held: &HashMap<String, RailDepositDoc>,
) -> ApiResult<Vec<ItemResult>> {
    let item = |index: usize| format!("deposits[{index}]");
    let mut items = Vec::with_capacity(checked.len());
    for (index, deposit) in checked.into_iter().enumerate() {
        items.push(match next_step(ctx, principal, deposit, held).await {
            Next::Credit(movement, deposit) => Atomic::Apply(Box::new((*movement, deposit))),
            Next::Answered(Ok(DepositOutcome::Held(_))) | Next::Hold(..) => return Err(would_hold(index)),
            Next::Answered(Ok(done)) => Atomic::Done(done),
            Next::Answered(Err(error)) => return Err(error.in_item(&item(index))),
        });
    }
    let keys: Vec<String> = items
        .iter()
        .filter_map(|i| match i {
            Atomic::Apply(apply) => Some(apply.0.ledger_key.clone()),
            Atomic::Done(_) => None,
        })
        .collect();
    let before = ctx.store().transactions_by_ledger_keys(&keys).await?;
    let mut submissions = Vec::with_capacity(keys.len());
    for (index, entry) in items.iter_mut().enumerate() {
        let Atomic::Apply(apply) = entry else {
            continue;
        };
        let (movement, deposit) = &**apply;
        match before.get(&movement.ledger_key) {
            Some(tx) => {
                money::same_credit(tx, deposit).map_err(|e| e.in_item(&item(index)))?;
                *entry = Atomic::Done(DepositOutcome::AlreadyCredited(Box::new(tx.clone())));
            }
            None => submissions.push(Submission::from(movement.clone())),
        }
    }
    let mut applied = ctx.store().apply_atomically(submissions).await.into_iter();
    let mut results = Vec::with_capacity(items.len());
    for (index, entry) in items.into_iter().enumerate() {
        results.push(match entry {
            Atomic::Done(done) => Ok(done),
            Atomic::Apply(apply) => {
                atomic_outcome(&apply.1, applied.next().expect("one outcome per credit"), index)?
            }
        });
    }
    Ok(results)
}

/// One credit of an atomic unit: a refusal refuses the request (nothing was written).
fn atomic_outcome(
    deposit: &CheckedDeposit,
    outcome: Result<TransactionDoc, StoreError>,
    index: usize,
) -> ApiResult<ItemResult> {
    match outcome {
        Ok(tx) => Ok(Ok(DepositOutcome::Credited(Box::new(tx)))),
        // Credited by another request meanwhile: the others were applied without it.
        Err(StoreError::DuplicateLedgerKey(tx)) => {
            Ok(money::same_credit(&tx, deposit).map(|()| DepositOutcome::AlreadyCredited(tx)))
        }
        Err(StoreError::LimitExceeded) => Err(would_hold(index)),
        Err(StoreError::NotApplied) => Err(ApiError::Unprocessable {
            code: "atomic_request_refused",
            detail: "another deposit of this atomic request was refused: nothing was credited".into(),
        }),
        Err(other) => Err(ApiError::from(other).in_item(&format!("deposits[{index}]"))),
    }
}

fn would_hold(index: usize) -> ApiError {
    ApiError::Unprocessable {
        code: "rail_caps_exceeded",
        detail: format!(
            "deposits[{index}] is above the rail's caps and would be held for staff: an atomic request credits every deposit or none, so nothing was credited"
        ),
    }
}

fn view(atomic: bool, deposits: &[DepositRequest], results: Vec<ItemResult>) -> BulkDepositView {
    let results: Vec<BulkItemView> = results
        .into_iter()
        .zip(deposits)
        .enumerate()
        .map(|(index, (result, request))| item_view(index, request, result))
        .collect();
    let count = |status: BulkItemStatus| results.iter().filter(|r| r.status == status).count();
    BulkDepositView {
        atomic,
        credited: count(BulkItemStatus::Credited),
        already_credited: count(BulkItemStatus::AlreadyCredited),
        held: count(BulkItemStatus::Held),
        refused: count(BulkItemStatus::Refused),
        results,
    }
}

fn item_view(index: usize, request: &DepositRequest, result: ItemResult) -> BulkItemView {
    let mut item = BulkItemView {
        index,
        external_reference: request.external_reference.trim().to_string(),
        status: BulkItemStatus::Refused,
        transaction_id: None,
        rail_deposit_id: None,
        code: None,
        detail: None,
    };
    match result {
        Ok(DepositOutcome::Credited(tx)) => {
            item.status = BulkItemStatus::Credited;
            item.transaction_id = Some(tx.id.clone());
        }
        Ok(DepositOutcome::AlreadyCredited(tx)) => {
            item.status = BulkItemStatus::AlreadyCredited;
            item.transaction_id = Some(tx.id.clone());
        }
        Ok(DepositOutcome::Held(record)) => {
            item.status = BulkItemStatus::Held;
            item.rail_deposit_id = Some(record.id.clone());
        }
        Err(error) => {
            item.code = Some(error.code().to_string());
            item.detail = error.detail();
        }
    }
    item
}
