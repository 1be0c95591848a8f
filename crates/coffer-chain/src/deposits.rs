//! The rules that turn chain data into deposits, shared by the listener's block scan and the
//! check of provider webhooks (docs/chain.md), so both read the chain the same way: a native
//! transfer is a successful transaction with a recipient and a non-zero value, reported without
//! a log index; a token transfer is an ERC-20 `Transfer` log emitted by the asset's own contract.

use std::collections::HashMap;

use alloy::consensus::Transaction as _;
use alloy::network::TransactionResponse as _;
use alloy::primitives::{Address, B256, U256};
use alloy::rpc::types::{Log, Transaction, TransactionReceipt};
use alloy::sol_types::SolEvent;
use coffer_domain::{Amount, AssetConfig, ChainDeposit};

use crate::rpc::{Rpc, Transfer as TransferEvent};
use crate::ChainError;

/// A transfer of an asset the catalog knows, decoded from the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub to: Address,
    pub asset: String,
    pub value: U256,
    pub tx_hash: B256,
    /// The `Transfer` log's index; `None` for a native coin transfer.
    pub log_index: Option<u64>,
}

/// Token contracts of `assets` and the symbol of each.
pub fn token_contracts(assets: &[AssetConfig]) -> HashMap<Address, String> {
    assets
        .iter()
        .filter_map(|a| Some((a.contract.as_deref()?.parse::<Address>().ok()?, a.symbol.clone())))
        .collect()
}

/// Native coin transfers among `txs` (the chain's native asset of `assets`, if it has one).
/// Their success is a receipt's to tell: see [`native_counts`].
pub fn native_transfers<'a>(
    assets: &[AssetConfig],
    txs: impl IntoIterator<Item = &'a Transaction>,
) -> Vec<Transfer> {
    let Some(native) = assets.iter().find(|a| a.contract.is_none()) else {
        return Vec::new();
    };
    txs.into_iter()
        .filter_map(|tx| {
            let to = tx.to()?;
            let value = tx.value();
            (!value.is_zero()).then(|| Transfer {
                to,
                asset: native.symbol.clone(),
                value,
                tx_hash: tx.tx_hash(),
                log_index: None,
            })
        })
        .collect()
}

/// ERC-20 transfers among `logs` emitted by a token contract of `assets`; logs of any other
/// contract, other events and undecodable logs are not transfers.
pub fn token_transfers(assets: &[AssetConfig], logs: &[Log]) -> Vec<Transfer> {
    let tokens = token_contracts(assets);
    logs.iter()
        .filter_map(|log| {
            let symbol = tokens.get(&log.inner.address)?;
            if log.topic0() != Some(&TransferEvent::SIGNATURE_HASH) {
                return None;
            }
            let decoded = TransferEvent::decode_log(&log.inner).ok()?;
            Some(Transfer {
                to: decoded.data.to,
                asset: symbol.clone(),
                value: decoded.data.value,
                tx_hash: log.transaction_hash?,
                log_index: Some(log.log_index?),
            })
        })
        .collect()
}

/// Whether a native transfer counts: its transaction succeeded (a reverted transaction moved
/// no value). Token transfers need no such check: a reverted transaction leaves no logs.
pub fn native_counts(receipt: Option<&TransactionReceipt>) -> bool {
    receipt.is_some_and(|r| r.status())
}

/// What the chain says about a reported deposit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainVerdict {
    /// The chain has this transfer: the deposit as the chain tells it.
    Proven(ChainDeposit),
    /// The chain does not back the report; the reason is a stable label
    /// (`coffer_webhook_events_rejected_total{reason}`).
    Disagrees(&'static str),
    /// The node has not reached the reported block yet: ask again later.
    NotYetVisible,
}

/// The reasons a report can disagree with the chain, in one list (metrics are created for each).
pub const DISAGREEMENTS: [&str; 7] = [
    "transaction_not_found",
    "transaction_failed",
    "block_mismatch",
    "not_canonical",
    "no_such_transfer",
    "recipient_mismatch",
    "amount_mismatch",
];

/// Checks `claim` against the node: its transaction's receipt (and the transaction itself for
/// the native coin) decoded with the listener's rules, in the canonical block the claim names.
/// `assets` are the catalog's assets of the claim's chain.
pub async fn verify_reported(
    rpc: &Rpc,
    assets: &[AssetConfig],
    claim: &ChainDeposit,
) -> Result<ChainVerdict, ChainError> {
    let Ok(hash) = claim.tx_hash.parse::<B256>() else {
        return Ok(ChainVerdict::Disagrees("transaction_not_found"));
    };
    let Some(receipt) = rpc.receipt(hash).await? else {
        if rpc.head().await? < claim.block_number {
            return Ok(ChainVerdict::NotYetVisible);
        }
        return Ok(ChainVerdict::Disagrees("transaction_not_found"));
    };
    let block_hash = receipt.block_hash.map(|h| format!("{h:#x}"));
    if receipt.block_number != Some(claim.block_number) || block_hash.as_deref() != Some(&claim.block_hash) {
        return Ok(ChainVerdict::Disagrees("block_mismatch"));
    }
    if rpc.block_hash(claim.block_number).await?.as_deref() != Some(claim.block_hash.as_str()) {
        return Ok(ChainVerdict::Disagrees("not_canonical"));
    }
    let transfers = match claim.log_index {
        None => {
            if !native_counts(Some(&receipt)) {
                return Ok(ChainVerdict::Disagrees("transaction_failed"));
            }
            let tx = rpc.transaction(hash).await?;
            native_transfers(assets, tx.iter())
        }
        Some(_) => token_transfers(assets, receipt.inner.logs()),
    };
    let found = transfers
        .into_iter()
        .find(|t| t.tx_hash == hash && t.log_index == claim.log_index && t.asset == claim.asset);
    let Some(transfer) = found else {
        return Ok(ChainVerdict::Disagrees("no_such_transfer"));
    };
    let proven = ChainDeposit {
        address: format!("{:#x}", transfer.to),
        amount: Amount::from_atomic(transfer.value),
        ..claim.clone()
    };
    Ok(match claim.disagreement(&proven) {
        Some(reason) => ChainVerdict::Disagrees(reason),
        None => ChainVerdict::Proven(proven),
    })
}
