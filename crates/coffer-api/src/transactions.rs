//! The caller's transactions: state, timeline, ledger entries.

use axum::extract::{Path, State};
use axum::Json;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Cursor, PageLimit, Principal, ValidQuery};
use crate::views::{LedgerEntryView, ReturnView, TransactionPage, TransactionView};
use crate::wallets::PageQuery;
use crate::ApiContext;

/// Transactions the caller took part in, newest first.
#[utoipa::path(get, path = "/v1/transactions", tag = "transactions", params(PageQuery),
    responses((status = 200, body = TransactionPage)), security(("bearer" = [])))]
pub async fn list_transactions(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ValidQuery(page): ValidQuery<PageQuery>,
) -> ApiResult<Json<TransactionPage>> {
    let result = ctx
        .store()
        .transactions_page(
            &principal.user_id,
            page.cursor.as_ref().map(Cursor::as_str),
            PageLimit::or(page.limit, 50),
        )
        .await?;
    let items = result.items.iter().map(TransactionView::from_doc).collect();
    Ok(Json(TransactionPage {
        items,
        next_cursor: result.next_cursor,
    }))
}

/// One transaction with its timeline and the ledger entries on the caller's wallets.
#[utoipa::path(get, path = "/v1/transactions/{id}", tag = "transactions", params(("id" = String, Path)),
    responses((status = 200, body = TransactionView), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn get_transaction(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<TransactionView>> {
    let store = ctx.store();
    let tx = store
        .transaction_of_user(&principal.user_id, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let decimals = tx.decimals;
    let entries = store
        .entries_of_transaction_for_user(&tx.id, &principal.user_id)
        .await?;
    let mut view = TransactionView::from_doc(&tx);
    view.ledger_entries = Some(
        entries
            .iter()
            .map(|e| LedgerEntryView::from_doc(e, decimals))
            .collect::<ApiResult<_>>()?,
    );
    let returns = store.returns_of(&tx.id).await?;
    view.returns = Some(returns.iter().map(ReturnView::from_doc).collect());
    Ok(Json(view))
}
