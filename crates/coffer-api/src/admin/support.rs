//! Support reads (O7, S2): a user's wallets and a transaction's whole story; every read of user
//! data is audited.

use axum::extract::{Path, State};
use axum::Json;
use coffer_store::audit_chain::actions;
use coffer_store::OutboxDoc;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::*;
use crate::error::{ApiError, ApiResult, Problem};
use crate::views::{time, LedgerEntryView, TransactionView, WalletView};
use crate::ApiContext;

/// This feature's read routes.
pub fn reads() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(user_wallets))
        .routes(routes!(transaction_story))
}

/// This feature's mutating routes (served behind the Idempotency-Key middleware).
pub fn writes() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(revoke_user_sessions))
}

#[derive(Serialize, ToSchema)]
pub struct SessionsRevoked {
    pub user_id: String,
    /// How many sessions were active and are now ended.
    pub revoked: u64,
}

/// End every session of a user (support, admin): e.g. a reported account takeover. Their access
/// tokens stop working within seconds and their event streams close.
#[utoipa::path(post, path = "/v1/admin/users/{id}/sessions/revoke", tag = "admin", params(("id" = String, Path),
        ("Idempotency-Key" = String, Header, description = "Required")),
    responses((status = 200, body = SessionsRevoked), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn revoke_user_sessions(
    State(ctx): State<ApiContext>,
    principal: Authorized<SessionRevokers>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionsRevoked>> {
    crate::idempotency::idempotency_key(&headers)?;
    ctx.store().user_by_id(&id).await?.ok_or(ApiError::NotFound)?;
    let reason = coffer_store::tokens::RevokeReason::StaffAction;
    let revoked = crate::auth::end_every_session(&ctx, &id, reason).await?;
    audit(
        &ctx,
        &principal,
        actions::USER_SESSIONS_REVOKED,
        &id,
        json!({ "revoked": revoked }),
    )
    .await?;
    Ok(Json(SessionsRevoked { user_id: id, revoked }))
}

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
    principal: Authorized<SupportReaders>,
    Path(id): Path<String>,
) -> ApiResult<Json<UserWallets>> {
    let wallets = wallets_of_user(&ctx, &principal, &id).await?;
    let wallets = wallets
        .iter()
        .map(WalletView::from_doc)
        .collect::<ApiResult<_>>()?;
    Ok(Json(UserWallets { user_id: id, wallets }))
}

/// A user's wallets sorted by asset; the read is audited (the API and the console both call it).
pub(crate) async fn wallets_of_user(
    ctx: &ApiContext,
    principal: &Principal,
    user_id: &str,
) -> ApiResult<Vec<coffer_store::WalletDoc>> {
    ctx.store().user_by_id(user_id).await?.ok_or(ApiError::NotFound)?;
    audit(ctx, principal, actions::USER_WALLETS_VIEWED, user_id, json!({})).await?;
    let mut wallets = ctx.store().wallets_of_user(user_id).await?;
    wallets.sort_by(|a, b| a.asset.cmp(&b.asset));
    Ok(wallets)
}

#[derive(Serialize, ToSchema)]
pub struct EventView {
    pub id: String,
    pub event_type: String,
    pub wallet_id: String,
    pub created_at: String,
    /// Whether the outbox publisher has published it (its partition's cursor passed it).
    pub published: bool,
    #[schema(value_type = Object)]
    pub data: Value,
}

impl EventView {
    pub(crate) fn from_doc(event: &OutboxDoc, published: bool) -> Self {
        EventView {
            id: event.id.clone(),
            event_type: event.event_type.clone(),
            wallet_id: event.subject.clone(),
            created_at: time(&event.created_at),
            published,
            data: event.data.clone(),
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
    principal: Authorized<SupportReaders>,
    Path(id): Path<String>,
) -> ApiResult<Json<TransactionStoryView>> {
    let story = transaction_story_of(&ctx, &principal, &id).await?;
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
        last_event: story
            .last_event
            .as_ref()
            .map(|e| EventView::from_doc(e, story.last_event_published)),
    }))
}

/// A transaction's story; the read is audited (the API and the console both call it).
pub(crate) async fn transaction_story_of(
    ctx: &ApiContext,
    principal: &Principal,
    id: &str,
) -> ApiResult<coffer_store::support::TransactionStory> {
    let story = ctx
        .store()
        .transaction_story(id)
        .await?
        .ok_or(ApiError::NotFound)?;
    audit(ctx, principal, actions::TRANSACTION_VIEWED, id, json!({})).await?;
    Ok(story)
}
