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
use alloy::rpc::types::TransactionReceipt;
use alloy::sol;
use alloy::sol_types::SolCall;
use coffer_domain::gas::{plan_withdrawal_gas, PaidGas};
use coffer_domain::movement::Movement;
use coffer_domain::replacement::{next_fees, Fees, NoReplacement, ReplacementPolicy};
use coffer_domain::{AssetConfig, LedgerTransaction, LiveCatalog, TxState};
use coffer_store::model::{BroadcastDoc, SignedKind, SignedVersion};
use coffer_store::transitions::{ChainProgress, Guard, Note, Transition};
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
    /// When a broadcast withdrawal counts as stuck, and the highest fee a replacement may offer.
    pub replacement: ReplacementPolicy,
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
            replacement: ReplacementPolicy {
                stuck_after: Duration::from_secs(300),
                max_fee_per_gas_cap: 500_000_000_000,
            },
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
    /// Versions signed to replace a stuck one (fee raised) or to cancel one.
    pub replaced: u64,
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

fn hash_of(tx: &TransactionDoc, text: &str) -> Result<B256, ChainError> {
    text.parse()
        .map_err(|_| ChainError::Rpc(format!("stored hash of {} is not a hash", tx.id)))
}

fn raw_of(tx: &TransactionDoc, version: &SignedVersion) -> Result<Vec<u8>, ChainError> {
    hex::decode(version.raw_tx.trim_start_matches("0x"))
        .map_err(|_| ChainError::Rpc(format!("stored transaction of {} is not hex", tx.id)))
}

/// A fee field as stored (wei per gas; the cap keeps it far below `i64::MAX`).
fn stored_fee(value: u128) -> Result<i64, ChainError> {
    i64::try_from(value)
        .map_err(|_| ChainError::Config(format!("a fee of {value} wei per gas cannot be stored")))
}

/// Stored fee fields (wei per gas) as the replacement rule reads them: a withdrawal's, a
/// sweep's or a gas funding's latest version.
pub(crate) fn fees_of(max_fee_per_gas: i64, max_priority_fee_per_gas: i64) -> Fees {
    Fees {
        max_fee_per_gas: max_fee_per_gas.max(0) as u128,
        max_priority_fee_per_gas: max_priority_fee_per_gas.max(0) as u128,
    }
}

fn signed_version(
    signed: &crate::signer::SignedTx,
    kind: SignedKind,
    fees: Fees,
) -> Result<SignedVersion, ChainError> {
    Ok(SignedVersion {
        tx_hash: hex_of(&signed.hash),
        raw_tx: format!("0x{}", hex::encode(&signed.raw)),
        signed_at: coffer_store::codec::now(),
        kind,
        max_fee_per_gas: stored_fee(fees.max_fee_per_gas)?,
        max_priority_fee_per_gas: stored_fee(fees.max_priority_fee_per_gas)?,
    })
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
            let fees = self.suggested_fees(gas_price);
            let unsigned_tx = self.payload(tx, asset, chain_id, nonce as u64, fees)?;
            let signed = self.signer.sign(unsigned_tx).await?;
            let version = signed_version(&signed, SignedKind::Payment, fees)?;
            let record = BroadcastDoc {
                chain: self.config.chain.clone(),
                from: from_text.clone(),
                nonce,
                tx_hash: version.tx_hash,
                raw_tx: version.raw_tx,
                signed_at: version.signed_at,
                kind: SignedKind::Payment,
                max_fee_per_gas: version.max_fee_per_gas,
                max_priority_fee_per_gas: version.max_priority_fee_per_gas,
                replaced: Vec::new(),
                mined_tx_hash: None,
                cancel: None,
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

    /// The fees a first version offers at the node's `gas_price`.
    fn suggested_fees(&self, gas_price: u128) -> Fees {
        Fees {
            max_fee_per_gas: gas_price.saturating_mul(2),
            max_priority_fee_per_gas: self.config.max_priority_fee_per_gas.min(gas_price),
        }
    }

    /// The unsigned transaction paying `tx` out: a coin transfer, or the token's `transfer`.
    fn payload(
        &self,
        tx: &TransactionDoc,
        asset: &AssetConfig,
        chain_id: u64,
        nonce: u64,
        fees: Fees,
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
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
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

    /// Follows broadcast withdrawals (and signed ones in review): receipts, confirmations, final
    /// states, replacements of stuck ones and cancels.
    async fn track(&self, outcome: &mut BroadcastOutcome) -> Result<(), ChainError> {
        let assets = self.chain_assets();
        let symbols = Self::symbols(&assets);
        let head = self.rpc.head().await?;
        for state in [TxState::Broadcasted, TxState::Confirming, TxState::ManualReview] {
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
                if let Err(error) = self.follow(&tx, &record, asset, head, outcome).await {
                    // One withdrawal that cannot move on does not hold up the others.
                    self.metrics
                        .poll_errors
                        .with_label_values(&[&self.config.chain, "broadcaster"])
                        .inc();
                    tracing::warn!(transaction_id = %tx.id, %error, "withdrawal not followed; retried next poll");
                }
            }
        }
        Ok(())
    }

    /// The version of `record` the chain mined, with its receipt: every version spends the same
    /// nonce, so at most one has a receipt.
    async fn mined_version(
        &self,
        tx: &TransactionDoc,
        record: &BroadcastDoc,
    ) -> Result<Option<(SignedVersion, TransactionReceipt)>, ChainError> {
        for version in record.versions() {
            if let Some(receipt) = self.rpc.receipt(hash_of(tx, &version.tx_hash)?).await? {
                return Ok(Some((version, receipt)));
            }
        }
        Ok(None)
    }

    async fn follow(
        &self,
        tx: &TransactionDoc,
        record: &BroadcastDoc,
        asset: &AssetConfig,
        head: u64,
        outcome: &mut BroadcastOutcome,
    ) -> Result<(), ChainError> {
        let wallet = tx
            .from_wallet_id
            .as_deref()
            .ok_or_else(|| ChainError::Store(StoreError::Corrupt("a withdrawal without a wallet".into())))?;
        let Some((version, receipt)) = self.mined_version(tx, record).await? else {
            return self.unmined(tx, record, wallet, asset, head, outcome).await;
        };
        let block = receipt.block_number.unwrap_or(head);
        let fee = network_fee(receipt.gas_used, receipt.effective_gas_price);
        // Gas is paid in the chain's coin: booked with the settlement when the withdrawn asset is
        // that coin, as a fee movement of the coin (`token_gas`) when it is a token.
        let booked_fee = asset.contract.is_none().then_some(fee);
        let confirmations = head.saturating_sub(block) + 1;
        let required = u64::from(asset.confirmations_required.max(1));
        let progress = ChainProgress {
            block_number: block as i64,
            network_fee: fee,
            confirmations: Some(confirmations as i64),
            mined_tx_hash: version.tx_hash.clone(),
        };
        let (to, ledger, cause) = if !receipt.status() {
            let release = LedgerTransaction::withdrawal_release(&tx.asset, wallet, tx.amount, booked_fee);
            (
                TxState::Failed,
                release,
                format!("reverted on chain in block {block}; funds released"),
            )
        } else if confirmations < required {
            return self.mined_unconfirmed(tx, record, progress, required).await;
        } else if version.kind == SignedKind::Cancel {
            let release = LedgerTransaction::withdrawal_release(&tx.asset, wallet, tx.amount, booked_fee);
            let cause = format!(
                "cancelled: the zero-value replacement {} was mined in block {block} with {confirmations} confirmations; funds released",
                version.tx_hash
            );
            (TxState::Failed, release, cause)
        } else {
            let settle = LedgerTransaction::withdrawal_settlement(&tx.asset, wallet, tx.amount, booked_fee);
            (
                TxState::Confirmed,
                settle,
                format!("{confirmations} confirmations (block {block})"),
            )
        };
        let gas = self.token_gas(tx, asset, &version.tx_hash, &receipt)?;
        if self.finish(tx, to, ledger, cause, progress, gas).await? {
            match to {
                TxState::Confirmed => outcome.confirmed += 1,
                _ => outcome.failed += 1,
            }
        }
        Ok(())
    }

    /// A version is mined but has fewer than `required` confirmations: record the progress (a
    /// payment moves Broadcasted → Confirming; a cancel stays Broadcasted until it is final).
    async fn mined_unconfirmed(
        &self,
        tx: &TransactionDoc,
        record: &BroadcastDoc,
        progress: ChainProgress,
        required: u64,
    ) -> Result<(), ChainError> {
        let confirmations = progress.confirmations.unwrap_or(0);
        let paid = record
            .versions()
            .iter()
            .any(|v| v.tx_hash == progress.mined_tx_hash && v.kind == SignedKind::Payment);
        if paid && tx.state == TxState::Broadcasted {
            let mined = Transition::new(
                &tx.id,
                TxState::Broadcasted,
                TxState::Confirming,
                format!(
                    "mined in block {}; {confirmations} of {required} confirmations",
                    progress.block_number
                ),
            );
            self.transition(mined.with_note(Note::Chain(progress))).await?;
        } else if record.confirmations != confirmations
            || record.block_number != Some(progress.block_number)
            || record.mined_tx_hash.as_deref() != Some(progress.mined_tx_hash.as_str())
        {
            self.store
                .set_withdrawal_progress(
                    &tx.id,
                    Some((&progress.mined_tx_hash, progress.block_number)),
                    confirmations,
                )
                .await?;
        }
        Ok(())
    }

    /// No version is mined. If the nonce was taken by a transaction that is none of them, with the
    /// asset's confirmations, none can ever be mined: the hold is released. Otherwise a cancel is
    /// signed if staff asked, a stuck payment is re-signed with higher fees, and a version the node
    /// lost is sent again.
    async fn unmined(
        &self,
        tx: &TransactionDoc,
        record: &BroadcastDoc,
        wallet: &str,
        asset: &AssetConfig,
        head: u64,
        outcome: &mut BroadcastOutcome,
    ) -> Result<(), ChainError> {
        let required = u64::from(asset.confirmations_required.max(1));
        if self.nonce_taken(record, head, required).await? {
            let release = LedgerTransaction::withdrawal_release(&tx.asset, wallet, tx.amount, None);
            let cause = format!(
                "nonce {} was taken by another transaction ({required} confirmations): this withdrawal can never be mined; funds released",
                record.nonce
            );
            self.bump("nonce_taken");
            let release = release.map_err(|e| ChainError::Store(StoreError::Corrupt(e.to_string())))?;
            let transition = Transition::new(&tx.id, tx.state, TxState::Failed, cause)
                .with_ledger(release)
                .with_guard(Guard::Latest(record.tx_hash.clone()));
            if self.transition(transition).await? {
                self.count_finished(TxState::Failed);
                outcome.failed += 1;
            }
            return Ok(());
        }
        if record.confirmations != 0 || record.mined_tx_hash.is_some() {
            self.store.set_withdrawal_progress(&tx.id, None, 0).await?;
        }
        if tx.state == TxState::Broadcasted {
            let cancel = record.cancel.is_some() && record.kind != SignedKind::Cancel;
            let kind = if cancel { SignedKind::Cancel } else { record.kind };
            if self.replace(tx, record, asset, kind, cancel, outcome).await? {
                return Ok(());
            }
        }
        // Not mined (or re-orged out): make sure the node still has the latest version; if not,
        // the same signed bytes go out again. (In review, a person or the chain decides.)
        if tx.state != TxState::ManualReview
            && self
                .rpc
                .transaction(hash_of(tx, &record.tx_hash)?)
                .await?
                .is_none()
        {
            let _ = self.rpc.send_raw(&raw_of(tx, &record.latest())?).await;
            self.bump("retry");
        }
        Ok(())
    }

    /// Whether the hot wallet's transaction count, at the block `required` confirmations deep,
    /// is past `record`'s nonce (called only once no version of `record` has a receipt).
    async fn nonce_taken(&self, record: &BroadcastDoc, head: u64, required: u64) -> Result<bool, ChainError> {
        let Some(settled) = (head + 1).checked_sub(required) else {
            return Ok(false);
        };
        let from: Address = record.from.parse().map_err(|_| {
            ChainError::Config(format!("stored hot wallet {} is not an address", record.from))
        })?;
        Ok(self.rpc.nonce_at(from, settled).await? > record.nonce.max(0) as u64)
    }

    /// Signs and stores the next version of `record` (same nonce, fees raised by the replacement
    /// rule) — a payment when it is stuck, a cancel at once when `now` — then sends it. Returns
    /// whether a version was sent.
    async fn replace(
        &self,
        tx: &TransactionDoc,
        record: &BroadcastDoc,
        asset: &AssetConfig,
        kind: SignedKind,
        now: bool,
        outcome: &mut BroadcastOutcome,
    ) -> Result<bool, ChainError> {
        let policy = &self.config.replacement;
        let waited = (coffer_store::codec::now() - record.signed_at)
            .to_std()
            .unwrap_or_default();
        let unmined_for = if now {
            waited.max(policy.stuck_after)
        } else {
            waited
        };
        let gas_price = self.rpc.gas_price().await?;
        let versions = record.replaced.len() + 1;
        let fees = match next_fees(
            policy,
            fees_of(record.max_fee_per_gas, record.max_priority_fee_per_gas),
            self.suggested_fees(gas_price),
            unmined_for,
            versions,
        ) {
            Ok(fees) => fees,
            Err(NoReplacement::NotStuck) => return Ok(false),
            Err(why) => {
                tracing::debug!(transaction_id = %tx.id, %why, "stuck withdrawal not replaced");
                return Ok(false);
            }
        };
        let chain_id = self.rpc.chain_id().await?;
        let nonce = record.nonce.max(0) as u64;
        let unsigned = match kind {
            SignedKind::Payment => self.payload(tx, asset, chain_id, nonce, fees)?,
            SignedKind::Cancel => self.cancel_payload(chain_id, nonce, fees),
        };
        let version = signed_version(&self.signer.sign(unsigned).await?, kind, fees)?;
        let stored = match self.store.record_replacement(&tx.id, record, version).await {
            Ok(stored) => stored,
            // Moved or replaced meanwhile: this signature is dropped unsent.
            Err(StoreError::StateConflict) => return Ok(true),
            Err(other) => return Err(other.into()),
        };
        outcome.replaced += 1;
        self.bump(if kind == SignedKind::Cancel {
            "cancel_signed"
        } else {
            "replaced"
        });
        tracing::info!(transaction_id = %tx.id, tx_hash = %stored.tx_hash, nonce, kind = ?kind,
            max_fee_per_gas = stored.max_fee_per_gas, "withdrawal re-signed with the same nonce");
        if let Err(error) = self.rpc.send_raw(&raw_of(tx, &stored.latest())?).await {
            tracing::warn!(transaction_id = %tx.id, %error, "replacement not accepted yet; the next poll sends it again");
        }
        Ok(true)
    }

    /// A zero-value transfer from the hot wallet to itself: once mined, the nonce is spent.
    fn cancel_payload(&self, chain_id: u64, nonce: u64, fees: Fees) -> TxEip1559 {
        TxEip1559 {
            chain_id,
            nonce,
            gas_limit: self.config.native_gas_limit,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            to: TxKind::Call(self.signer.address()),
            value: U256::ZERO,
            input: Bytes::new(),
            ..Default::default()
        }
    }

    fn count_finished(&self, to: TxState) {
        self.metrics
            .withdrawals_finished
            .with_label_values(&[&self.config.chain, to.as_str()])
            .inc();
    }

    /// The coin gas a mined token withdrawal paid, as a fee movement of the chain's coin (`None`
    /// for a coin withdrawal, whose settlement books its gas itself, or a free dev chain).
    fn token_gas(
        &self,
        tx: &TransactionDoc,
        asset: &AssetConfig,
        hash: &str,
        receipt: &TransactionReceipt,
    ) -> Result<Option<Movement>, ChainError> {
        let Some(contract) = asset.contract.as_deref() else {
            return Ok(None);
        };
        let assets = self.chain_assets();
        // Without the coin its gas cannot be booked: the withdrawal is not settled (the poll
        // error is counted) rather than settled with its cost missing from the books for good.
        let Some(coin) = assets.iter().find(|a| a.contract.is_none()) else {
            return Err(ChainError::Config(format!(
                "withdrawal {}: chain {} has no coin asset in the catalog to book the token withdrawal's gas in",
                tx.id, self.config.chain
            )));
        };
        let paid = PaidGas {
            ledger_key: String::new(),
            tx_hash: Some(hash),
            to: contract,
            gas_used: receipt.gas_used,
            effective_gas_price: receipt.effective_gas_price,
        };
        let origin = coffer_domain::Origin {
            transaction_id: coffer_store::new_id(),
            now: chrono::Utc::now(),
            initiated_by: "broadcaster".to_string(),
        };
        plan_withdrawal_gas(origin, &tx.id, paid, coin)
            .map_err(|e| ChainError::Store(StoreError::Corrupt(e.to_string())))
    }

    /// Moves `tx` to its final state `to` with the postings that settle or release its hold
    /// (and, for a token, the coin gas it paid).
    async fn finish(
        &self,
        tx: &TransactionDoc,
        to: TxState,
        ledger: Result<LedgerTransaction, coffer_domain::LedgerError>,
        cause: String,
        progress: ChainProgress,
        gas: Option<Movement>,
    ) -> Result<bool, ChainError> {
        let ledger = ledger.map_err(|e| ChainError::Store(StoreError::Corrupt(e.to_string())))?;
        let transition = Transition::new(&tx.id, tx.state, to, cause)
            .with_ledger(ledger)
            .with_note(Note::Chain(progress))
            .with_companion(gas);
        let moved = self.transition(transition).await?;
        if moved {
            self.count_finished(to);
        }
        Ok(moved)
    }
}
