//! Response bodies. Amounts are decimal strings scaled by the asset's decimals, never numbers.

use chrono::{DateTime, SecondsFormat, Utc};
use coffer_domain::amount::signed_decimal_string;
use coffer_store::{LedgerEntryDoc, TransactionDoc, WalletDoc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};

/// A time as the API writes it: RFC 3339, UTC, milliseconds.
pub(crate) fn time(value: &DateTime<Utc>) -> String {
    value.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn corrupt(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

#[derive(Serialize, ToSchema)]
pub struct WalletView {
    pub id: String,
    pub asset: String,
    /// Digits after the decimal point of this asset's amounts.
    pub decimals: u8,
    /// Spendable now, e.g. "1.75".
    pub available: String,
    /// Seen but not final (deposits confirming).
    pub pending: String,
    /// Reserved for withdrawals in progress.
    pub held: String,
    /// available + pending + held.
    pub total: String,
    pub created_at: String,
    /// Set when the balances are those as of this instant (`?as_of=`), not now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
}

impl WalletView {
    pub fn from_doc(wallet: &WalletDoc) -> ApiResult<Self> {
        let balances = wallet.balances().map_err(corrupt)?;
        let d = wallet.decimals;
        Ok(WalletView {
            id: wallet.id.clone(),
            asset: wallet.asset.clone(),
            decimals: d,
            available: balances.available.to_decimal_string(d),
            pending: balances.pending.to_decimal_string(d),
            held: balances.held.to_decimal_string(d),
            total: balances.total().to_decimal_string(d),
            created_at: time(&wallet.created_at),
            as_of: None,
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct LedgerEntryView {
    pub id: String,
    pub transaction_id: String,
    pub wallet_id: String,
    /// deposit, withdrawal, transfer, fee, reversal, adjustment, conversion, refund or dispute.
    pub kind: String,
    /// available, pending or held.
    pub bucket: String,
    /// Signed from the wallet's point of view: "-0.75" left the bucket.
    pub amount: String,
    pub created_at: String,
}

impl LedgerEntryView {
    pub fn from_doc(entry: &LedgerEntryDoc, decimals: u8) -> ApiResult<Self> {
        let (amount, negative) = (entry.amount.magnitude, entry.amount.negative);
        Ok(LedgerEntryView {
            id: entry.id.clone(),
            transaction_id: entry.transaction_id.clone(),
            wallet_id: entry.account_id.clone(),
            kind: entry.kind.as_str().to_string(),
            bucket: entry.bucket.as_str().to_string(),
            amount: signed_decimal_string(&amount, negative, decimals),
            created_at: time(&entry.created_at),
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct StateChangeView {
    pub from: Option<String>,
    pub to: String,
    pub at: String,
    pub cause: String,
}

#[derive(Serialize, ToSchema)]
pub struct TransactionView {
    pub id: String,
    pub kind: String,
    /// created, pending_broadcast, broadcasted, confirming, confirmed, retryable, failed,
    /// manual_review, disputed.
    pub state: String,
    pub asset: String,
    pub decimals: u8,
    pub amount: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_wallet_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_wallet_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// A withdrawal's chain transaction hash, once signed (it is stored before the broadcast): the
    /// mined version's once mined, else the latest signed version's (a stuck withdrawal is
    /// re-signed with the same nonce and higher fees, so the hash can change until it is mined).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_tx_hash: Option<String>,
    /// A sent withdrawal's confirmations so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmations: Option<i64>,
    /// A refund's or dispute's original transaction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_transaction_id: Option<String>,
    pub timeline: Vec<StateChangeView>,
    /// The entries of this transaction on the caller's own wallets (detail view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_entries: Option<Vec<LedgerEntryView>>,
    /// The refunds and disputes of this transaction, oldest first (detail view only; at most 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub returns: Option<Vec<ReturnView>>,
    pub created_at: String,
    pub updated_at: String,
}

/// A refund or dispute of a transaction, as its original lists it.
#[derive(Serialize, ToSchema)]
pub struct ReturnView {
    pub id: String,
    /// refund or dispute.
    pub kind: String,
    /// A refund is confirmed; a dispute is disputed (open), failed (released) or confirmed (reversed).
    pub state: String,
    pub amount: String,
}

impl ReturnView {
    pub fn from_doc(tx: &TransactionDoc) -> Self {
        ReturnView {
            id: tx.id.clone(),
            kind: tx.kind.as_str().to_string(),
            state: tx.state.as_str().to_string(),
            amount: tx.amount.to_decimal_string(tx.decimals),
        }
    }
}

impl TransactionView {
    pub fn from_doc(tx: &TransactionDoc) -> Self {
        let decimals = tx.decimals;
        TransactionView {
            id: tx.id.clone(),
            kind: tx.kind.as_str().to_string(),
            state: tx.state.as_str().to_string(),
            asset: tx.asset.clone(),
            decimals,
            amount: tx.amount.to_decimal_string(decimals),
            from_wallet_id: tx.from_wallet_id.clone(),
            to_wallet_id: tx.to_wallet_id.clone(),
            external_reference: tx.external_reference.clone(),
            destination: tx.destination.clone(),
            chain_tx_hash: tx
                .broadcast
                .as_ref()
                .map(|b| b.mined_tx_hash.clone().unwrap_or_else(|| b.tx_hash.clone())),
            confirmations: tx.broadcast.as_ref().map(|b| b.confirmations),
            timeline: tx
                .timeline
                .iter()
                .map(|c| StateChangeView {
                    from: c.from.map(|s| s.as_str().to_string()),
                    to: c.to.as_str().to_string(),
                    at: time(&c.at),
                    cause: c.cause.clone(),
                })
                .collect(),
            original_transaction_id: tx.original_transaction_id.clone(),
            ledger_entries: None,
            returns: None,
            created_at: time(&tx.created_at),
            updated_at: time(&tx.updated_at),
        }
    }
}

/// A page of ledger entries, newest first; pass `next_cursor` as `cursor` for the next page.
#[derive(Serialize, ToSchema)]
pub struct LedgerPage {
    pub items: Vec<LedgerEntryView>,
    pub next_cursor: Option<String>,
}

/// A page of transactions, newest first; pass `next_cursor` as `cursor` for the next page.
#[derive(Serialize, ToSchema)]
pub struct TransactionPage {
    pub items: Vec<TransactionView>,
    pub next_cursor: Option<String>,
}

/// A device of the caller. Only a trusted device may request withdrawals.
#[derive(Serialize, ToSchema)]
pub struct DeviceView {
    pub id: String,
    pub name: String,
    /// Whether the device may request withdrawals now.
    pub trusted: bool,
    /// When it becomes (or became) trusted: after the cooling-off period, or when a trusted
    /// device vouched for it.
    pub trusted_from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    pub created_at: String,
}

impl DeviceView {
    pub fn from_doc(device: &coffer_store::devices::DeviceDoc) -> Self {
        DeviceView {
            id: device.id.clone(),
            name: device.name.clone(),
            trusted: device.is_trusted_at(coffer_store::codec::now()),
            trusted_from: time(&device.trusted_from),
            revoked_at: device.revoked_at.as_ref().map(time),
            created_at: time(&device.created_at),
        }
    }
}
