//! The withdrawal broadcaster: signs approved withdrawals through a [`Signer`], stores each signed
//! transaction (with the hot wallet's nonce) BEFORE broadcasting it, broadcasts, and follows it to
//! Confirmed (settling the hold against custody) or Failed (releasing the hold).
//!
//! ```text
//! PendingBroadcast ──sign+store──► PendingBroadcast(signed) ──send / found by hash──► Broadcasted
//! Broadcasted ──receipt──► Confirming ──threshold──► Confirmed (held → custody, gas → fees)
//!      └──── reverted receipt ────────────────────► Failed (held → available)
//! ```
//!
//! Whatever fails in between (the process killed, the node's answer lost, the node down), the next
//! poll starts from what is stored: a withdrawal that has a signed transaction is never signed
//! again; its exact bytes are re-sent and looked up by hash. One broadcaster per hot wallet and
//! chain (the nonce record refuses a concurrent second one, see `Store::record_signed`).

use std::sync::Arc;
use std::time::Duration;

use alloy::consensus::TxEip1559;
use alloy::primitives::{Address, Bytes, TxKind, B256, U256};
use alloy::sol;
use alloy::sol_types::SolCall;
use coffer_domain::{AssetConfig, LedgerTransaction, LiveCatalog, TxState};
use coffer_store::model::BroadcastDoc;
use coffer_store::transitions::{ChainProgress, Note, Transition};
use coffer_store::withdrawals::network_fee;
use coffer_store::{Store, StoreError, TransactionDoc};

use crate::metrics::ChainMetrics;
use crate::rpc::Rpc;
use crate::signer::Signer;
use crate::ChainError;

sol! {
    /// ERC-20 `transfer`.
    function transfer(address to, uint256 amount) returns (bool);
}

/// The broadcaster's settings.
#[derive(Debug, Clone)]
pub struct BroadcasterConfig {
    pub chain: String,
    pub poll_interval: Duration,
    /// Withdrawals handled per state per poll.
    pub page: u32,
    pub native_gas_limit: u64,
    pub token_gas_limit: u64,
    /// The tip offered to block producers, capped by the node's gas price.
    pub max_priority_fee_per_gas: u128,
}

impl BroadcasterConfig {
    pub fn new(chain: &str) -> Self {
        BroadcasterConfig {
            chain: chain.to_string(),
            poll_interval: Duration::from_secs(2),
            page: 100,
            native_gas_limit: 21_000,
            token_gas_limit: 100_000,
            max_priority_fee_per_gas: 1_000_000_000,
        }
    }
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BroadcastOutcome {
    pub signed: u64,
    pub broadcast: u64,
    pub confirmed: u64,
    pub failed: u64,
    pub to_review: u64,
}

pub struct Broadcaster {
    config: BroadcasterConfig,
    rpc: Rpc,
    store: Store,
    catalog: LiveCatalog,
    signer: Arc<dyn Signer>,
    metrics: ChainMetrics,
}

fn hex_of(hash: &B256) -> String {
    format!("{hash:#x}")
}

fn store_error(error: StoreError) -> ChainError {
    ChainError::Store(error)
}

impl Broadcaster {
    pub fn new(
        config: BroadcasterConfig,
        rpc: Rpc,
        store: Store,
        catalog: LiveCatalog,
        signer: Arc<dyn Signer>,
    ) -> Self {
        let metrics = ChainMetrics::unregistered();
        metrics.init_chain(&config.chain);
        Broadcaster {
            config,
            rpc,
            store,
            catalog,
            signer,
            metrics,
        }
    }

    pub fn with_metrics(mut self, metrics: ChainMetrics) -> Self {
        metrics.init_chain(&self.config.chain);
        self.metrics = metrics;
        self
    }

    /// The hot wallet this broadcaster signs for.
    pub fn hot_wallet(&self) -> Address {
        self.signer.address()
    }

    /// Runs polls until `stop` resolves; errors are logged and retried after the interval.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            match self.poll_once().await {
                Ok(outcome) if outcome != BroadcastOutcome::default() => {
                    tracing::info!(chain = %self.config.chain, ?outcome, "broadcaster poll");
                }
                Ok(_) => {}
                Err(error) => {
                    self.metrics
                        .poll_errors
                        .with_label_values(&[&self.config.chain, "broadcaster"])
                        .inc();
                    tracing::warn!(chain = %self.config.chain, %error, "broadcaster poll failed; retrying");
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// One bounded step: sign what is approved, send what is signed, follow what is sent.
    pub async fn poll_once(&self) -> Result<BroadcastOutcome, ChainError> {
        let mut outcome = BroadcastOutcome::default();
        self.sign_pending(&mut outcome).await?;
        self.send_signed(&mut outcome).await?;
        self.track(&mut outcome).await?;
        if let Ok(stats) = self.store.withdrawal_stats().await {
            self.metrics.observe_withdrawals(&stats);
        }
        Ok(outcome)
    }

    fn chain_assets(&self) -> Vec<AssetConfig> {
        self.catalog
            .current()
            .iter()
            .filter(|a| a.chain == self.config.chain)
            .cloned()
            .collect()
    }

    fn symbols(assets: &[AssetConfig]) -> Vec<String> {
        assets.iter().map(|a| a.symbol.clone()).collect()
    }

    /// Signs every approved withdrawal without a signed transaction and stores it with its nonce.
    /// Nothing is broadcast here.
    pub async fn sign_pending(&self, outcome: &mut BroadcastOutcome) -> Result<(), ChainError> {
        let assets = self.chain_assets();
        let pending = self
            .store
            .withdrawals_in(
                &Self::symbols(&assets),
                TxState::PendingBroadcast,
                self.config.page,
            )
            .await?;
        let unsigned: Vec<&TransactionDoc> = pending.iter().filter(|t| t.broadcast.is_none()).collect();
        if unsigned.is_empty() {
            return Ok(());
        }
        let chain_id = self.rpc.chain_id().await?;
        let gas_price = self.rpc.gas_price().await?;
        let from = self.signer.address();
        let from_text = format!("{from:#x}");
        for tx in unsigned {
            let Some(asset) = assets.iter().find(|a| a.symbol == tx.asset) else {
                continue;
            };
            let recorded = self.store.recorded_nonce(&self.config.chain, &from_text).await?;
            // Someone may have used the hot wallet outside Coffer: never go below the chain's count.
            let mined = self.rpc.latest_nonce(from).await? as i64;
            let nonce = recorded.unwrap_or(0).max(mined);
            let unsigned_tx = self.payload(tx, asset, chain_id, nonce as u64, gas_price)?;
            let signed = self.signer.sign(unsigned_tx).await?;
            let record = BroadcastDoc {
                chain: self.config.chain.clone(),
                from: from_text.clone(),
                nonce,
                tx_hash: hex_of(&signed.hash),
                raw_tx: format!("0x{}", hex::encode(&signed.raw)),
                signed_at: coffer_store::codec::now(),
                block_number: None,
                confirmations: 0,
                network_fee: None,
            };
            match self.store.record_signed(&tx.id, recorded, &record).await {
                Ok(()) => {
                    // Signed and stored, not sent: a restart must send these bytes, not sign again.
                    coffer_telemetry::faults::point("broadcaster.after_sign");
                    outcome.signed += 1;
                    self.metrics
                        .withdrawals_signed
                        .with_label_values(&[&self.config.chain])
                        .inc();
                    tracing::info!(transaction_id = %tx.id, tx_hash = %record.tx_hash, nonce, "withdrawal signed and stored");
                }
                // Another writer moved the nonce or the withdrawal: this signature is dropped
                // unbroadcast and the next poll starts again from what is stored.
                Err(StoreError::StateConflict) => {
                    tracing::warn!(transaction_id = %tx.id, "withdrawal or nonce changed while signing; signature discarded");
                    return Ok(());
                }
                Err(other) => return Err(other.into()),
            }
        }
        Ok(())
    }

    /// The unsigned transaction paying `tx` out: a coin transfer, or the token's `transfer`.
    fn payload(
        &self,
        tx: &TransactionDoc,
        asset: &AssetConfig,
        chain_id: u64,
        nonce: u64,
        gas_price: u128,
    ) -> Result<TxEip1559, ChainError> {
        let destination: Address = tx
            .destination
            .as_deref()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| ChainError::Config(format!("withdrawal {} has no valid destination", tx.id)))?;
        let amount = U256::from_limbs(tx.amount.atomic().into_limbs());
        let (to, value, input, gas_limit) = match &asset.contract {
            None => (destination, amount, Bytes::new(), self.config.native_gas_limit),
            Some(contract) => {
                let contract: Address = contract.parse().map_err(|_| {
                    ChainError::Config(format!("asset {} has an invalid contract", asset.symbol))
                })?;
                let call = transferCall {
                    to: destination,
                    amount,
                };
                (
                    contract,
                    U256::ZERO,
                    Bytes::from(call.abi_encode()),
                    self.config.token_gas_limit,
                )
            }
        };
        Ok(TxEip1559 {
            chain_id,
            nonce,
            gas_limit,
            max_fee_per_gas: gas_price.saturating_mul(2),
            max_priority_fee_per_gas: self.config.max_priority_fee_per_gas.min(gas_price),
            to: TxKind::Call(to),
            value,
            input,
            ..Default::default()
        })
    }

    /// Sends every signed, not yet broadcast withdrawal (in nonce order) and moves those the
    /// node knows to Broadcasted.
    async fn send_signed(&self, outcome: &mut BroadcastOutcome) -> Result<(), ChainError> {
        let assets = self.chain_assets();
        let mut signed: Vec<TransactionDoc> = self
            .store
            .withdrawals_in(
                &Self::symbols(&assets),
                TxState::PendingBroadcast,
                self.config.page,
            )
            .await?
            .into_iter()
            .filter(|t| t.broadcast.as_ref().is_some_and(|b| b.chain == self.config.chain))
            .collect();
        signed.sort_by_key(|t| t.broadcast.as_ref().map(|b| b.nonce));
        for tx in signed {
            let record = tx.broadcast.clone().expect("filtered");
            let hash: B256 = record
                .tx_hash
                .parse()
                .map_err(|_| ChainError::Rpc(format!("stored hash of {} is not a hash", tx.id)))?;
            let raw = hex::decode(record.raw_tx.trim_start_matches("0x"))
                .map_err(|_| ChainError::Rpc(format!("stored transaction of {} is not hex", tx.id)))?;
            let sent = self.rpc.send_raw(&raw).await;
            let known = self.rpc.transaction(hash).await?.is_some();
            let (label, cause) = match (&sent, known) {
                (Ok(_), true) => (
                    "accepted",
                    format!("broadcast {} (nonce {})", record.tx_hash, record.nonce),
                ),
                (Err(_), true) => (
                    "found_after_error",
                    format!(
                        "broadcast {} (nonce {}); the node's answer was lost, found by hash",
                        record.tx_hash, record.nonce
                    ),
                ),
                (result, false) => {
                    let nonce_used = matches!(result, Err(ChainError::Rpc(m)) if m.contains("nonce too low"));
                    if nonce_used && self.rpc.receipt(hash).await?.is_none() {
                        // Our nonce was consumed by a transaction that is not this one: someone
                        // else used the hot wallet. A person decides; the hold stays.
                        self.bump("nonce_conflict");
                        self.transition(Transition::new(
                            &tx.id,
                            TxState::PendingBroadcast,
                            TxState::ManualReview,
                            "the hot wallet's nonce was used by another transaction; needs review",
                        ))
                        .await?;
                        outcome.to_review += 1;
                        continue;
                    }
                    self.bump("retry");
                    if let Err(error) = result {
                        tracing::warn!(transaction_id = %tx.id, %error, "broadcast not accepted; will re-send the same bytes");
                    }
                    continue;
                }
            };
            self.bump(label);
            let moved = Transition::new(&tx.id, TxState::PendingBroadcast, TxState::Broadcasted, cause);
            if self.transition(moved).await? {
                outcome.broadcast += 1;
            }
        }
        Ok(())
    }

    fn bump(&self, outcome: &str) {
        self.metrics
            .broadcasts
            .with_label_values(&[&self.config.chain, outcome])
            .inc();
    }

    /// Applies `transition`; a concurrent change (someone else moved it first) is not an error.
    async fn transition(&self, transition: Transition) -> Result<bool, ChainError> {
        match self.store.apply_transition(&transition).await {
            Ok(_) => Ok(true),
            Err(StoreError::StateConflict) => Ok(false),
            Err(other) => Err(store_error(other)),
        }
    }

    /// Follows broadcast withdrawals: receipts, confirmations, final states.
    async fn track(&self, outcome: &mut BroadcastOutcome) -> Result<(), ChainError> {
        let assets = self.chain_assets();
        let symbols = Self::symbols(&assets);
        let head = self.rpc.head().await?;
        for state in [TxState::Broadcasted, TxState::Confirming] {
            let sent = self
                .store
                .withdrawals_in(&symbols, state, self.config.page)
                .await?;
            for tx in sent {
                let Some(asset) = assets.iter().find(|a| a.symbol == tx.asset) else {
                    continue;
                };
                let Some(record) = tx.broadcast.clone().filter(|b| b.chain == self.config.chain) else {
                    continue;
                };
                self.follow(&tx, &record, asset, head, outcome).await?;
            }
        }
        Ok(())
    }

    async fn follow(
        &self,
        tx: &TransactionDoc,
        record: &BroadcastDoc,
        asset: &AssetConfig,
        head: u64,
        outcome: &mut BroadcastOutcome,
    ) -> Result<(), ChainError> {
        let hash: B256 = record
            .tx_hash
            .parse()
            .map_err(|_| ChainError::Rpc(format!("stored hash of {} is not a hash", tx.id)))?;
        let wallet = tx
            .from_wallet_id
            .as_deref()
            .ok_or_else(|| ChainError::Store(StoreError::Corrupt("a withdrawal without a wallet".into())))?;
        let Some(receipt) = self.rpc.receipt(hash).await? else {
            // Not mined (or re-orged out): make sure the node still has it; if not, the same
            // signed bytes go out again.
            if self.rpc.transaction(hash).await?.is_none() {
                let raw = hex::decode(record.raw_tx.trim_start_matches("0x"))
                    .map_err(|_| ChainError::Rpc(format!("stored transaction of {} is not hex", tx.id)))?;
                let _ = self.rpc.send_raw(&raw).await;
                self.bump("retry");
            }
            if record.confirmations != 0 {
                self.store.set_withdrawal_progress(&tx.id, None, 0).await?;
            }
            return Ok(());
        };
        let block = receipt.block_number.unwrap_or(head);
        let fee = network_fee(receipt.gas_used, receipt.effective_gas_price);
        // Gas is paid in the chain's coin: booked only when the withdrawn asset is that coin.
        let booked_fee = asset.contract.is_none().then_some(fee);
        let mut progress = ChainProgress {
            block_number: block as i64,
            network_fee: fee,
            confirmations: None,
        };
        if !receipt.status() {
            let release = LedgerTransaction::withdrawal_release(&tx.asset, wallet, tx.amount, booked_fee);
            let cause = format!("reverted on chain in block {block}; funds released");
            if self.finish(tx, TxState::Failed, release, cause, progress).await? {
                outcome.failed += 1;
            }
            return Ok(());
        }
        let confirmations = head.saturating_sub(block) + 1;
        progress.confirmations = Some(confirmations as i64);
        let required = u64::from(asset.confirmations_required.max(1));
        if confirmations >= required {
            let settle = LedgerTransaction::withdrawal_settlement(&tx.asset, wallet, tx.amount, booked_fee);
            let cause = format!("{confirmations} confirmations (block {block})");
            if self
                .finish(tx, TxState::Confirmed, settle, cause, progress)
                .await?
            {
                outcome.confirmed += 1;
            }
        } else if tx.state == TxState::Broadcasted {
            let mined = Transition::new(
                &tx.id,
                TxState::Broadcasted,
                TxState::Confirming,
                format!("mined in block {block}; {confirmations} of {required} confirmations"),
            );
            self.transition(mined.with_note(Note::Chain(progress))).await?;
        } else if record.confirmations != confirmations as i64 || record.block_number != Some(block as i64) {
            self.store
                .set_withdrawal_progress(&tx.id, Some(block as i64), confirmations as i64)
                .await?;
        }
        Ok(())
    }

    /// Moves `tx` to its final state `to` with the postings that settle or release its hold.
    async fn finish(
        &self,
        tx: &TransactionDoc,
        to: TxState,
        ledger: Result<LedgerTransaction, coffer_domain::LedgerError>,
        cause: String,
        progress: ChainProgress,
    ) -> Result<bool, ChainError> {
        let ledger = ledger.map_err(|e| ChainError::Store(StoreError::Corrupt(e.to_string())))?;
        let transition = Transition::new(&tx.id, tx.state, to, cause)
            .with_ledger(ledger)
            .with_note(Note::Chain(progress));
        let moved = self.transition(transition).await?;
        if moved {
            self.metrics
                .withdrawals_finished
                .with_label_values(&[&self.config.chain, to.as_str()])
                .inc();
        }
        Ok(moved)
    }
}
