//! Balances as of a time and statements (L9), from the ledger: every entry carries its wallet's
//! sequence number and balances right after it, so each answer is a bounded indexed read
//! (`coffer_store::history`), and a statement's opening balances plus its entries are its
//! closing balances.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use coffer_domain::amount::signed_decimal_string;
use coffer_domain::history::{BucketBalances, Position};
use coffer_domain::SignedAmount;
use coffer_store::history::STATEMENT_ENTRIES_MAX;
use coffer_store::{LedgerEntryDoc, WalletDoc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ApiResult, ErrorCode, Problem};
use crate::extract::{Instant, PageLimit, Principal, ValidQuery};
use crate::views::time;
use crate::ApiContext;

/// Most entry rows one CSV statement holds; a longer one is refused (`statement_too_large`):
/// ask for a shorter period, or page through the JSON statement.
pub const STATEMENT_CSV_ROWS_MAX: i64 = STATEMENT_ENTRIES_MAX as i64;

/// Balances at one point of a wallet's history, as decimal strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BalancesView {
    pub available: String,
    pub pending: String,
    pub held: String,
    /// available + pending + held.
    pub total: String,
}

impl BalancesView {
    pub fn of(balances: &BucketBalances, decimals: u8) -> ApiResult<Self> {
        let text = |a: SignedAmount| signed_decimal_string(&a.magnitude, a.negative, decimals);
        let total = balances
            .total()
            .ok_or_else(|| ApiError::Internal("a total past the ledger limit".into()))?;
        Ok(BalancesView {
            available: text(balances.available),
            pending: text(balances.pending),
            held: text(balances.held),
            total: text(total),
        })
    }
}

/// One entry of a statement.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatementEntryView {
    /// The wallet's sequence number of this entry: consecutive within a statement.
    pub seq: i64,
    pub id: String,
    pub transaction_id: String,
    /// deposit, withdrawal, transfer, fee, reversal or adjustment.
    pub kind: String,
    /// available, pending or held.
    pub bucket: String,
    /// Signed from the wallet's point of view: "-0.75" left the bucket.
    pub amount: String,
    pub posted_at: String,
    /// The wallet's balances right after this entry.
    pub balance_after: BalancesView,
}

impl StatementEntryView {
    fn of(entry: &LedgerEntryDoc, decimals: u8) -> ApiResult<Self> {
        let position = entry
            .position()
            .ok_or_else(|| ApiError::Internal(format!("entry {} has no position", entry.id)))?;
        Ok(StatementEntryView {
            seq: position.seq,
            id: entry.id.clone(),
            transaction_id: entry.transaction_id.clone(),
            kind: entry.kind.as_str().to_string(),
            bucket: entry.bucket.as_str().to_string(),
            amount: signed_decimal_string(&entry.amount.magnitude, entry.amount.negative, decimals),
            posted_at: time(&entry.created_at),
            balance_after: BalancesView::of(&position.balances, decimals)?,
        })
    }
}

/// One page of a wallet's statement: the entries posted after `from` up to and including `to`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatementPage {
    pub wallet_id: String,
    pub asset: String,
    pub decimals: u8,
    pub from: String,
    pub to: String,
    /// The balances as of `from` (equal to `GET /v1/wallets/{id}?as_of=<from>`).
    pub opening: BalancesView,
    /// The balances as of `to`: opening plus every entry of the statement.
    pub closing: BalancesView,
    /// In order (oldest first).
    pub items: Vec<StatementEntryView>,
    /// Pass as `cursor` (with the same `from` and `to`) for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatementQuery {
    /// Start (exclusive): RFC 3339, e.g. 2026-12-01T00:00:00Z.
    #[param(value_type = String, format = DateTime)]
    pub from: Instant,
    /// End (inclusive): RFC 3339; default now. Not before `from`.
    #[param(value_type = Option<String>, format = DateTime)]
    pub to: Option<Instant>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<String>)]
    pub cursor: Option<StatementCursor>,
    /// 1 to 100; default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<PageLimit>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatementCsvQuery {
    /// Start (exclusive): RFC 3339.
    #[param(value_type = String, format = DateTime)]
    pub from: Instant,
    /// End (inclusive): RFC 3339; default now. Not before `from`.
    #[param(value_type = Option<String>, format = DateTime)]
    pub to: Option<Instant>,
}

/// Where a statement's pages stand: its opening and closing sequence numbers, fixed by the first
/// page (so entries committed meanwhile never shift a later page), and the last one returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementCursor {
    opening_seq: i64,
    after_seq: i64,
    closing_seq: i64,
}

impl StatementCursor {
    fn encode(&self) -> String {
        format!("{}.{}.{}", self.opening_seq, self.after_seq, self.closing_seq)
    }
}

impl<'de> Deserialize<'de> for StatementCursor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let text = String::deserialize(deserializer)?;
        let parts: Vec<Option<i64>> = text.split('.').map(|p| p.parse::<i64>().ok()).collect();
        match parts.as_slice() {
            [Some(opening_seq), Some(after_seq), Some(closing_seq)]
                if 0 <= *opening_seq && opening_seq <= after_seq && after_seq < closing_seq =>
            {
                Ok(StatementCursor {
                    opening_seq: *opening_seq,
                    after_seq: *after_seq,
                    closing_seq: *closing_seq,
                })
            }
            _ => Err(D::Error::custom("cursor is not a next_cursor this API returned")),
        }
    }
}

/// The wallet of the caller, or 404 as every wallet route answers for another user's.
async fn own_wallet(ctx: &ApiContext, principal: &Principal, id: &str) -> ApiResult<WalletDoc> {
    ctx.store()
        .wallet_of_user(&principal.user_id, id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// `to`, or now; refused when before `from`.
fn period(from: Instant, to: Option<Instant>) -> ApiResult<(Instant, Instant)> {
    let now = Instant(coffer_store::codec::now());
    let to = to.unwrap_or(now);
    if to.0 < from.0 {
        return Err(ApiError::invalid_query("to", "to is before from"));
    }
    Ok((from, to))
}

/// A wallet's balances as of `at` (for `GET /v1/wallets/{id}?as_of=`).
pub async fn balances_as_of(ctx: &ApiContext, wallet: &WalletDoc, at: Instant) -> ApiResult<BalancesView> {
    let balances = ctx.store().balances_at(&wallet.id, at.0).await?;
    BalancesView::of(&balances, wallet.decimals)
}

/// A wallet's statement between two times, one page (JSON).
#[utoipa::path(get, path = "/v1/wallets/{id}/statement", tag = "wallets",
    params(("id" = String, Path), StatementQuery),
    responses((status = 200, body = StatementPage),
              (status = 400, description = "invalid_query (from, to, cursor or limit)", body = Problem),
              (status = 404, body = Problem),
              (status = 422, description = "history_unavailable", body = Problem)),
    security(("bearer" = [])))]
pub async fn statement(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
    ValidQuery(query): ValidQuery<StatementQuery>,
) -> ApiResult<Json<StatementPage>> {
    let wallet = own_wallet(&ctx, &principal, &id).await?;
    let (from, to) = period(query.from, query.to)?;
    let store = ctx.store();
    let (opening, closing, after_seq) = match query.cursor {
        Some(cursor) => (
            store.position_of_seq(&wallet.id, cursor.opening_seq).await?,
            store.position_of_seq(&wallet.id, cursor.closing_seq).await?,
            cursor.after_seq,
        ),
        None => {
            let opening = store.position_at(&wallet.id, from.0).await?;
            (opening, store.position_at(&wallet.id, to.0).await?, opening.seq)
        }
    };
    let limit = PageLimit::or(query.limit, 50);
    let entries = store
        .entries_between(&wallet.id, after_seq, closing.seq, limit)
        .await?;
    let last_seq = entries.last().and_then(|e| e.seq).unwrap_or(after_seq);
    let next_cursor = (last_seq < closing.seq).then(|| {
        StatementCursor {
            opening_seq: opening.seq,
            after_seq: last_seq,
            closing_seq: closing.seq,
        }
        .encode()
    });
    let d = wallet.decimals;
    Ok(Json(StatementPage {
        wallet_id: wallet.id.clone(),
        asset: wallet.asset.clone(),
        decimals: d,
        from: time(&from.0),
        to: time(&to.0),
        opening: BalancesView::of(&opening.balances, d)?,
        closing: BalancesView::of(&closing.balances, d)?,
        items: entries
            .iter()
            .map(|e| StatementEntryView::of(e, d))
            .collect::<ApiResult<_>>()?,
        next_cursor,
    }))
}

/// The CSV header of a statement.
pub const CSV_HEADER: &str =
    "row,seq,entry_id,transaction_id,posted_at,kind,bucket,amount,available_after,pending_after,held_after,total_after";

/// A wallet's statement between two times as CSV: an `opening` row, one `entry` row per entry
/// (the JSON statement's items, in order), a `closing` row. At most
/// [`STATEMENT_CSV_ROWS_MAX`] entries, else 422 `statement_too_large`.
#[utoipa::path(get, path = "/v1/wallets/{id}/statement.csv", tag = "wallets",
    params(("id" = String, Path), StatementCsvQuery),
    responses((status = 200, content_type = "text/csv", body = String,
               description = "header row, then opening, entry and closing rows"),
              (status = 400, description = "invalid_query (from or to)", body = Problem),
              (status = 404, body = Problem),
              (status = 422, description = "statement_too_large, history_unavailable", body = Problem)),
    security(("bearer" = [])))]
pub async fn statement_csv(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
    ValidQuery(query): ValidQuery<StatementCsvQuery>,
) -> ApiResult<Response> {
    let wallet = own_wallet(&ctx, &principal, &id).await?;
    let (from, to) = period(query.from, query.to)?;
    let store = ctx.store();
    let opening = store.position_at(&wallet.id, from.0).await?;
    let closing = store.position_at(&wallet.id, to.0).await?;
    let rows = closing.seq - opening.seq;
    if rows > STATEMENT_CSV_ROWS_MAX {
        return Err(ApiError::Unprocessable {
            code: ErrorCode::StatementTooLarge.as_str(),
            detail: format!(
                "the period holds {rows} entries; a CSV statement holds at most {STATEMENT_CSV_ROWS_MAX}: ask for a shorter period or page the JSON statement"
            ),
        });
    }
    let entries = store
        .entries_between(&wallet.id, opening.seq, closing.seq, STATEMENT_ENTRIES_MAX)
        .await?;
    let csv = render_csv(&wallet, (from, &opening), (to, &closing), &entries)?;
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response())
}

/// Every field is an id, a name, a number or a time: none needs quoting.
fn render_csv(
    wallet: &WalletDoc,
    (from, opening): (Instant, &Position),
    (to, closing): (Instant, &Position),
    entries: &[LedgerEntryDoc],
) -> ApiResult<String> {
    let d = wallet.decimals;
    let balances = |b: &BalancesView| format!("{},{},{},{}", b.available, b.pending, b.held, b.total);
    let mut csv = String::with_capacity(128 * (entries.len() + 3));
    csv.push_str(CSV_HEADER);
    csv.push('\n');
    let open = BalancesView::of(&opening.balances, d)?;
    csv.push_str(&format!(
        "opening,{},,,{},,,,{}\n",
        opening.seq,
        time(&from.0),
        balances(&open)
    ));
    for entry in entries {
        let view = StatementEntryView::of(entry, d)?;
        csv.push_str(&format!(
            "entry,{},{},{},{},{},{},{},{}\n",
            view.seq,
            view.id,
            view.transaction_id,
            view.posted_at,
            view.kind,
            view.bucket,
            view.amount,
            balances(&view.balance_after)
        ));
    }
    let close = BalancesView::of(&closing.balances, d)?;
    csv.push_str(&format!(
        "closing,{},,,{},,,,{}\n",
        closing.seq,
        time(&to.0),
        balances(&close)
    ));
    Ok(csv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_a_forged_one_is_refused() {
        let cursor = StatementCursor {
            opening_seq: 3,
            after_seq: 10,
            closing_seq: 40,
        };
        let parsed: StatementCursor = serde_json::from_value(serde_json::json!(cursor.encode())).unwrap();
        assert_eq!(parsed, cursor);
        for forged in ["", "1.2", "a.b.c", "5.4.9", "1.9.9", "-1.0.3", "1.2.3.4"] {
            assert!(
                serde_json::from_value::<StatementCursor>(serde_json::json!(forged)).is_err(),
                "{forged}"
            );
        }
    }
}
