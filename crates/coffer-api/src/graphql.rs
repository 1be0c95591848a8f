//! `POST /v1/graphql`: a read-only GraphQL view of the caller's own wallets, balances, ledger
//! entries and transactions, for clients that pick their fields (docs/api.md "GraphQL").
//!
//! The same reads as REST, through the same store functions, scoped to the same principal: the
//! bearer token is checked (with its session) before the body is read, every root field is
//! resolved for the caller's user id only, and an object of another user is `null`, exactly like
//! one that does not exist. Objects and pages mirror the REST views (amounts are decimal strings,
//! times RFC 3339 UTC milliseconds, cursors are the REST `next_cursor`s). There is no mutation
//! and no subscription; depth, complexity and page sizes are bounded.

use std::sync::OnceLock;

use async_graphql::{
    Context, EmptyMutation, EmptySubscription, ErrorExtensions, Object, Schema, Variables, ID,
};
use axum::extract::State;
use axum::Json;
use coffer_store::queries::PAGE_LIMIT_MAX;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};
use crate::extract::{Principal, ValidJson};
use crate::views::{LedgerEntryView, TransactionView, WalletView};
use crate::ApiContext;

/// The deepest selection a query may nest (the schema's own deepest useful one is 4).
pub const DEPTH_MAX: usize = 8;
/// The most a query may cost: one per field, [`STORE_READ_COST`] more per field that reads the
/// store, and what is under a page's `items` once per item it may hold (`first`).
pub const COMPLEXITY_MAX: usize = 5000;
/// What a field that reads the store adds to a query's complexity: at most ~50 reads a request.
const STORE_READ_COST: usize = 100;
/// `first` when a connection is asked for without it (as REST's `limit`).
const PAGE_DEFAULT: u32 = 50;

/// The schema the endpoint serves.
pub type CofferSchema = Schema<Query, EmptyMutation, EmptySubscription>;

/// The schema (built once; it holds no state: each request brings its context and caller).
pub fn schema() -> &'static CofferSchema {
    static SCHEMA: OnceLock<CofferSchema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        Schema::build(Query, EmptyMutation, EmptySubscription)
            .limit_depth(DEPTH_MAX)
            .limit_complexity(COMPLEXITY_MAX)
            .finish()
    })
}

/// The schema in GraphQL SDL, as committed in docs/schema.graphql.
pub fn sdl() -> String {
    schema().sdl()
}

/// A GraphQL request (GraphQL over HTTP, JSON body).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GraphqlRequest {
    /// The GraphQL document: one or more query operations.
    pub query: String,
    /// The values of the document's variables.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub variables: Option<serde_json::Map<String, serde_json::Value>>,
    /// Which operation of the document to run (required when it has several).
    #[serde(default, rename = "operationName")]
    pub operation_name: Option<String>,
    /// Accepted and ignored (clients' protocol extensions, such as persisted-query hashes).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub extensions: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A GraphQL response: `data` as selected (null when the request was refused before it ran),
/// and `errors` when anything failed; each error's `extensions.code` is one of the API's codes
/// when the failure is ours (`invalid_query`, `internal`, `retry_later`).
#[derive(Serialize, ToSchema)]
pub struct GraphqlResponse {
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<GraphqlError>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub extensions: Option<serde_json::Value>,
}

/// One error of a GraphQL response.
#[derive(Serialize, ToSchema)]
pub struct GraphqlError {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub locations: Option<Vec<serde_json::Value>>,
    /// The field that failed: names and list indexes.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Value>>)]
    pub path: Option<Vec<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub extensions: Option<serde_json::Value>,
}

/// Read the caller's wallets, balances, ledger pages and transactions, choosing the fields.
/// Read-only (a mutation or subscription is refused in `errors`); at most 8 levels deep and a
/// complexity of 5000; `first` is 1 to 100. A GraphQL answer is 200 even when it holds `errors`;
/// the token, the body and the rate limit are refused as by every REST read (problem+json).
#[utoipa::path(post, path = "/v1/graphql", tag = "wallets", request_body = GraphqlRequest,
    responses((status = 200, description = "The GraphQL response: `data` and/or `errors`", body = GraphqlResponse)),
    security(("bearer" = [])))]
pub async fn graphql(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ValidJson(body): ValidJson<GraphqlRequest>,
) -> Json<async_graphql::Response> {
    let mut request = async_graphql::Request::new(body.query);
    if let Some(variables) = body.variables {
        request = request.variables(Variables::from_json(serde_json::Value::Object(variables)));
    }
    if let Some(name) = body.operation_name {
        request = request.operation_name(name);
    }
    let request = request.data(Caller {
        ctx,
        user_id: principal.user_id,
    });
    let mut response = schema().execute(request).await;
    // Parse, validation and limit errors (too deep, too complex) carry no code of their own:
    // they are the query's fault. Resolver errors already carry one (`gql_error`, `page_args`).
    for error in &mut response.errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_none() {
            extensions.set("code", ErrorCode::InvalidQuery.as_str());
        }
    }
    Json(response)
}

/// Who asks, and through which context: every resolver reads for this user only.
struct Caller {
    ctx: ApiContext,
    user_id: String,
}

fn caller<'a>(ctx: &Context<'a>) -> &'a Caller {
    ctx.data_unchecked::<Caller>()
}

/// A failure as a GraphQL error carrying the API's code; an internal one is logged, not told.
fn gql_error(error: ApiError) -> async_graphql::Error {
    let code = error.code();
    let message = if error.status().is_server_error() {
        tracing::error!(code, error = %error, "graphql resolver failed");
        code.to_string()
    } else {
        error.detail().unwrap_or_else(|| code.to_string())
    };
    async_graphql::Error::new(message).extend_with(|_, e| e.set("code", code))
}

fn store_error(error: coffer_store::StoreError) -> async_graphql::Error {
    gql_error(error.into())
}

/// How many items a page asked for with `first` may hold, for its complexity: the fields under
/// `items` run once per item, so `transactions(first: 100) { items { ledgerEntries { .. } } }`
/// costs 100 store reads and must cost so much (out of range is refused by [`page_args`]).
fn page_items(first: Option<i32>) -> usize {
    usize::try_from(
        first
            .unwrap_or(PAGE_DEFAULT as i32)
            .clamp(1, PAGE_LIMIT_MAX as i32),
    )
    .unwrap_or(1)
}

/// `first` and `after` as REST's `limit` and `cursor`: refused (never clamped) when out of range.
fn page_args(first: Option<i32>, after: Option<String>) -> async_graphql::Result<(u32, Option<String>)> {
    let invalid = |argument: &str, detail: String| {
        async_graphql::Error::new(detail).extend_with(|_, e| {
            e.set("code", ErrorCode::InvalidQuery.as_str());
            e.set("argument", argument);
        })
    };
    let limit = match first {
        None => PAGE_DEFAULT,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| (1..=PAGE_LIMIT_MAX).contains(n))
            .ok_or_else(|| invalid("first", format!("first is from 1 to {PAGE_LIMIT_MAX}, not {n}")))?,
    };
    let cursor = match after {
        None => None,
        Some(text) => Some(
            uuid::Uuid::parse_str(&text)
                .map(|id| id.hyphenated().to_string())
                .map_err(|_| invalid("after", "after is not a nextCursor this API returned".into()))?,
        ),
    };
    Ok((limit, cursor))
}

/// The root: everything is the caller's own.
pub struct Query;

#[Object]
impl Query {
    /// The caller's wallets (as GET /v1/wallets).
    #[graphql(complexity = "STORE_READ_COST + child_complexity")]
    async fn wallets(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Wallet>> {
        let caller = caller(ctx);
        let wallets = caller
            .ctx
            .store()
            .wallets_of_user(&caller.user_id)
            .await
            .map_err(store_error)?;
        wallets
            .iter()
            .map(|w| Wallet::from_doc(w).map_err(gql_error))
            .collect()
    }

    /// One of the caller's wallets; null when there is none with this id for the caller.
    #[graphql(complexity = "STORE_READ_COST + child_complexity")]
    async fn wallet(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Wallet>> {
        let caller = caller(ctx);
        let wallet = caller
            .ctx
            .store()
            .wallet_of_user(&caller.user_id, &id)
            .await
            .map_err(store_error)?;
        wallet
            .as_ref()
            .map(Wallet::from_doc)
            .transpose()
            .map_err(gql_error)
    }

    /// The transactions the caller took part in, newest first (as GET /v1/transactions).
    #[graphql(complexity = "STORE_READ_COST + page_items(first) * child_complexity")]
    async fn transactions(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "1 to 100; default 50")] first: Option<i32>,
        #[graphql(desc = "`nextCursor` of the previous page")] after: Option<String>,
    ) -> async_graphql::Result<TransactionConnection> {
        let (limit, cursor) = page_args(first, after)?;
        let caller = caller(ctx);
        let page = caller
            .ctx
            .store()
            .transactions_page(&caller.user_id, cursor.as_deref(), limit)
            .await
            .map_err(store_error)?;
        Ok(TransactionConnection {
            items: page
                .items
                .iter()
                .map(|tx| Transaction(TransactionView::from_doc(tx)))
                .collect(),
            next_cursor: page.next_cursor,
        })
    }

    /// One transaction the caller took part in; null otherwise.
    #[graphql(complexity = "STORE_READ_COST + child_complexity")]
    async fn transaction(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Transaction>> {
        let caller = caller(ctx);
        let tx = caller
            .ctx
            .store()
            .transaction_of_user(&caller.user_id, &id)
            .await
            .map_err(store_error)?;
        Ok(tx.map(|tx| Transaction(TransactionView::from_doc(&tx))))
    }
}

/// A wallet of the caller: one per asset.
pub struct Wallet {
    view: WalletView,
}

impl Wallet {
    fn from_doc(doc: &coffer_store::model::WalletDoc) -> Result<Self, ApiError> {
        Ok(Wallet {
            view: WalletView::from_doc(doc)?,
        })
    }
}

#[Object]
impl Wallet {
    async fn id(&self) -> ID {
        ID(self.view.id.clone())
    }
    /// The asset's symbol, e.g. "ETH".
    async fn asset(&self) -> &str {
        &self.view.asset
    }
    /// Digits after the decimal point of this asset's amounts.
    async fn decimals(&self) -> u8 {
        self.view.decimals
    }
    /// Spendable now, e.g. "1.75".
    async fn available(&self) -> &str {
        &self.view.available
    }
    /// Seen but not final (deposits confirming).
    async fn pending(&self) -> &str {
        &self.view.pending
    }
    /// Reserved for withdrawals in progress.
    async fn held(&self) -> &str {
        &self.view.held
    }
    /// available + pending + held.
    async fn total(&self) -> &str {
        &self.view.total
    }
    async fn created_at(&self) -> &str {
        &self.view.created_at
    }

    /// The wallet's ledger entries, newest first (as GET /v1/wallets/{id}/ledger).
    #[graphql(complexity = "STORE_READ_COST + page_items(first) * child_complexity")]
    async fn ledger(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "1 to 100; default 50")] first: Option<i32>,
        #[graphql(desc = "`nextCursor` of the previous page")] after: Option<String>,
    ) -> async_graphql::Result<LedgerEntryConnection> {
        let (limit, cursor) = page_args(first, after)?;
        // A `Wallet` is only ever built from a wallet of the caller (see `Query`).
        let page = caller(ctx)
            .ctx
            .store()
            .ledger_page(&self.view.id, cursor.as_deref(), limit)
            .await
            .map_err(store_error)?;
        let items = page
            .items
            .iter()
            .map(|e| LedgerEntryView::from_doc(e, self.view.decimals).map(LedgerEntry))
            .collect::<Result<_, _>>()
            .map_err(gql_error)?;
        Ok(LedgerEntryConnection {
            items,
            next_cursor: page.next_cursor,
        })
    }
}

/// One ledger entry on a wallet of the caller.
pub struct LedgerEntry(LedgerEntryView);

#[Object]
impl LedgerEntry {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn transaction_id(&self) -> ID {
        ID(self.0.transaction_id.clone())
    }
    async fn wallet_id(&self) -> ID {
        ID(self.0.wallet_id.clone())
    }
    /// deposit, withdrawal, transfer, fee, reversal, adjustment, conversion, refund or dispute.
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    /// available, pending or held.
    async fn bucket(&self) -> &str {
        &self.0.bucket
    }
    /// Signed from the wallet's point of view: "-0.75" left the bucket.
    async fn amount(&self) -> &str {
        &self.0.amount
    }
    async fn created_at(&self) -> &str {
        &self.0.created_at
    }
}

/// A page of ledger entries, newest first; pass `nextCursor` as `after` for the next page.
pub struct LedgerEntryConnection {
    items: Vec<LedgerEntry>,
    next_cursor: Option<String>,
}

#[Object]
impl LedgerEntryConnection {
    async fn items(&self) -> &[LedgerEntry] {
        &self.items
    }
    /// The cursor of the next page; null on the last.
    async fn next_cursor(&self) -> Option<&str> {
        self.next_cursor.as_deref()
    }
}

/// A transaction the caller took part in.
pub struct Transaction(TransactionView);

#[Object]
impl Transaction {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// deposit, withdrawal, transfer, fee, reversal, adjustment, conversion, refund or dispute.
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    /// created, pending_broadcast, broadcasted, confirming, confirmed, retryable, failed,
    /// manual_review, disputed.
    async fn state(&self) -> &str {
        &self.0.state
    }
    async fn asset(&self) -> &str {
        &self.0.asset
    }
    async fn decimals(&self) -> u8 {
        self.0.decimals
    }
    async fn amount(&self) -> &str {
        &self.0.amount
    }
    async fn from_wallet_id(&self) -> Option<ID> {
        self.0.from_wallet_id.clone().map(ID)
    }
    async fn to_wallet_id(&self) -> Option<ID> {
        self.0.to_wallet_id.clone().map(ID)
    }
    async fn external_reference(&self) -> Option<&str> {
        self.0.external_reference.as_deref()
    }
    async fn destination(&self) -> Option<&str> {
        self.0.destination.as_deref()
    }
    /// A withdrawal's chain transaction hash, once signed.
    async fn chain_tx_hash(&self) -> Option<&str> {
        self.0.chain_tx_hash.as_deref()
    }
    /// A sent withdrawal's confirmations so far.
    async fn confirmations(&self) -> Option<i64> {
        self.0.confirmations
    }
    /// A refund's or dispute's original transaction.
    async fn original_transaction_id(&self) -> Option<ID> {
        self.0.original_transaction_id.clone().map(ID)
    }
    /// Its states, oldest first.
    async fn timeline(&self) -> Vec<StateChange> {
        self.0
            .timeline
            .iter()
            .map(|c| StateChange {
                from: c.from.clone(),
                to: c.to.clone(),
                at: c.at.clone(),
                cause: c.cause.clone(),
            })
            .collect()
    }
    async fn created_at(&self) -> &str {
        &self.0.created_at
    }
    async fn updated_at(&self) -> &str {
        &self.0.updated_at
    }

    /// The entries of this transaction on the caller's own wallets.
    #[graphql(complexity = "STORE_READ_COST + child_complexity")]
    async fn ledger_entries(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<LedgerEntry>> {
        let caller = caller(ctx);
        let entries = caller
            .ctx
            .store()
            .entries_of_transaction_for_user(&self.0.id, &caller.user_id)
            .await
            .map_err(store_error)?;
        entries
            .iter()
            .map(|e| LedgerEntryView::from_doc(e, self.0.decimals).map(LedgerEntry))
            .collect::<Result<_, _>>()
            .map_err(gql_error)
    }
}

/// One change of a transaction's state (as REST's `timeline` items).
#[derive(async_graphql::SimpleObject)]
pub struct StateChange {
    /// The state before; null for the first.
    from: Option<String>,
    to: String,
    at: String,
    cause: String,
}

/// A page of transactions, newest first; pass `nextCursor` as `after` for the next page.
pub struct TransactionConnection {
    items: Vec<Transaction>,
    next_cursor: Option<String>,
}

#[Object]
impl TransactionConnection {
    async fn items(&self) -> &[Transaction] {
        &self.items
    }
    /// The cursor of the next page; null on the last.
    async fn next_cursor(&self) -> Option<&str> {
        self.next_cursor.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `COFFER_UPDATE_GRAPHQL=1` rewrites docs/schema.graphql from the code instead of comparing.
    #[test]
    fn committed_graphql_schema_is_the_served_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/schema.graphql");
        let served = sdl();
        if std::env::var_os("COFFER_UPDATE_GRAPHQL").is_some() {
            std::fs::write(path, &served).expect("write docs/schema.graphql");
            return;
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == served,
            "docs/schema.graphql differs from the served schema: run \
             `COFFER_UPDATE_GRAPHQL=1 cargo test -p coffer-api --lib graphql` and review the diff"
        );
    }

    /// Refused before any resolver runs (so no caller is needed here).
    #[tokio::test]
    async fn a_page_of_store_reads_is_too_complex() {
        let response = schema()
            .execute("{ transactions(first: 100) { items { ledgerEntries { amount } } } }")
            .await;
        assert!(response.data == async_graphql::Value::Null);
        assert!(
            response.errors[0].message.contains("too complex"),
            "{:?}",
            response.errors
        );
        assert!(page_items(Some(1000)) == 100 && page_items(Some(-5)) == 1 && page_items(None) == 50);
    }

    #[test]
    fn the_schema_is_read_only() {
        let sdl = sdl();
        assert!(sdl.contains("type Query"), "{sdl}");
        assert!(
            !sdl.contains("type Mutation") && !sdl.contains("type Subscription"),
            "{sdl}"
        );
    }

    #[test]
    fn first_and_after_are_refused_out_of_range_never_clamped() {
        assert_eq!(page_args(None, None).unwrap(), (50, None));
        assert_eq!(page_args(Some(100), None).unwrap().0, 100);
        for first in [0, -1, 101, i32::MAX] {
            let error = page_args(Some(first), None).unwrap_err();
            assert!(error.message.contains("first"), "{first}: {}", error.message);
        }
        assert!(page_args(None, Some("nope".into())).is_err());
        let cursor = "0190A0B1-0000-7000-8000-000000000001".to_string();
        assert_eq!(
            page_args(None, Some(cursor)).unwrap().1.as_deref(),
            Some("0190a0b1-0000-7000-8000-000000000001")
        );
    }
}
