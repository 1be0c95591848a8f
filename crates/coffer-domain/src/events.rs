//! Product-safe event payloads written to the outbox in the same database transaction as the
//! money movement. Each payload type is versioned; fields are only ever added within a version.

use serde::{Deserialize, Serialize};

/// The event types mobile clients and consumers see (BRIEF E2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "wallet.balance.updated")]
    BalanceUpdated,
    #[serde(rename = "wallet.transaction.created")]
    TransactionCreated,
    #[serde(rename = "wallet.transaction.updated")]
    TransactionUpdated,
    #[serde(rename = "wallet.transaction.requires_review")]
    TransactionRequiresReview,
    #[serde(rename = "wallet.deposit.detected")]
    DepositDetected,
    #[serde(rename = "wallet.withdrawal.confirmed")]
    WithdrawalConfirmed,
}

impl EventType {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::BalanceUpdated => "wallet.balance.updated",
            EventType::TransactionCreated => "wallet.transaction.created",
            EventType::TransactionUpdated => "wallet.transaction.updated",
            EventType::TransactionRequiresReview => "wallet.transaction.requires_review",
            EventType::DepositDetected => "wallet.deposit.detected",
            EventType::WithdrawalConfirmed => "wallet.withdrawal.confirmed",
        }
    }

    /// The version of this type's `data` schema.
    pub fn data_version(&self) -> u32 {
        1
    }
}

/// `wallet.balance.updated` v1: a wallet's balances after a movement, as decimal strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceUpdatedV1 {
    pub wallet_id: String,
    pub asset: String,
    pub decimals: u8,
    pub available: String,
    pub pending: String,
    pub held: String,
    pub total: String,
    pub transaction_id: String,
}

/// `wallet.transaction.created|updated` v1: what a wallet owner may know of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionEventV1 {
    pub transaction_id: String,
    pub wallet_id: String,
    pub kind: String,
    pub state: String,
    pub asset: String,
    /// Signed from the wallet's point of view: "-0.75" leaves the wallet.
    pub amount: String,
}

/// `wallet.deposit.detected` v1: a chain deposit to the wallet was seen; it is pending until it
/// has `confirmations_required` confirmations (then `wallet.transaction.updated` says confirmed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositDetectedV1 {
    pub transaction_id: String,
    pub wallet_id: String,
    pub asset: String,
    pub amount: String,
    pub chain: String,
    pub tx_hash: String,
    pub block_number: u64,
    pub confirmations_required: u32,
}

/// `wallet.withdrawal.confirmed` v1: the withdrawal is settled on chain (final).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithdrawalConfirmedV1 {
    pub transaction_id: String,
    pub wallet_id: String,
    pub asset: String,
    /// Negative: it left the wallet.
    pub amount: String,
    pub destination: Option<String>,
    pub chain: Option<String>,
    pub tx_hash: Option<String>,
}
