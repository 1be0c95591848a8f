//! The sweeper: moves what deposit addresses hold to the hot wallet, on each asset's policy
//! (docs/chain.md, "Sweeping deposit addresses"). Native coin only for now.
//!
//! ```text
//! (address, nonce) ──claim (insert)──► Planned ──sign+store──► Signed ──send──► Broadcasted
//! Broadcasted ──receipt + confirmations──► Confirmed (gas → fees) | Failed (reverted; gas → fees)
//! ```
//!
//! Correctness does not depend on this process's memory: the claim is a unique insert of
//! `<chain>:<address>:<nonce>`, signing is stored conditionally on Planned before anything is
//! sent, and every later step re-reads the store. A second replica or a restart resumes from
//! the stored sweep and re-sends its exact bytes; it never signs another transaction for the
//! same address and nonce.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::consensus::TxEip1559;
pub use alloy::primitives::Address;
use alloy::primitives::{TxKind, U256};
use coffer_domain::sweep::{
    check_ceiling, plan_gas_fee, plan_native, MinedSweep, NoSweep, SweepFees, SweepPolicy, SweepState,
};
use coffer_domain::{AssetConfig, LiveCatalog};
use coffer_store::sweeps::SweepDoc;
use coffer_store::{Store, StoreError};
use prometheus::{IntCounterVec, Opts, Registry};

use crate::rpc::Rpc;
use crate::sweep_signer::DepositKeySigner;
use crate::ChainError;

/// Outcomes of `coffer_sweeps_total{asset,outcome}`.
pub const SWEEP_OUTCOMES: [&str; 7] = [
    "signed",
    "confirmed",
    "failed",
    "dust",
    "gas_above_ceiling",
    "claimed_elsewhere",
    "send_error",
];

/// The sweeper's metrics.
#[derive(Clone)]
pub struct SweepMetrics {
    pub sweeps: IntCounterVec,
}

impl SweepMetrics {
    pub fn unregistered() -> Self {
        SweepMetrics {
            sweeps: IntCounterVec::new(
                Opts::new(
                    "coffer_sweeps_total",
                    "Sweeps of deposit addresses to the hot wallet, by outcome: signed, confirmed, failed (reverted), dust (below the minimum), gas_above_ceiling (round skipped), claimed_elsewhere (another replica), send_error.",
                ),
                &["asset", "outcome"],
            )
            .expect("a valid metric"),
        }
    }

    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self::unregistered();
        registry.register(Box::new(metrics.sweeps.clone()))?;
        Ok(metrics)
    }

    fn count(&self, asset: &str, outcome: &str) {
        self.sweeps.with_label_values(&[asset, outcome]).inc();
    }
}

/// The sweeper's settings.
#[derive(Debug, Clone)]
pub struct SweeperConfig {
    pub chain: String,
    pub poll_interval: Duration,
    /// The tip offered to block producers (wei per gas).
    pub max_priority_fee_per_gas: u128,
    /// The policy of each swept asset (by symbol); assets without one are not swept.
    pub policies: BTreeMap<String, SweepPolicy>,
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    pub signed: u64,
    pub broadcast: u64,
    pub confirmed: u64,
    pub failed: u64,
    pub dust: u64,
    pub skipped_for_gas: bool,
    pub claimed_elsewhere: u64,
}

pub struct Sweeper {
    config: SweeperConfig,
    rpc: Rpc,
    store: Store,
    catalog: LiveCatalog,
    signer: Arc<dyn DepositKeySigner>,
    hot_wallet: Address,
    metrics: SweepMetrics,
    /// Where the next round's page of addresses starts, per asset (a fairness hint only).
    cursors: Mutex<BTreeMap<String, String>>,
}

fn hex_hash(text: &str) -> Result<alloy::primitives::B256, ChainError> {
    text.parse()
        .map_err(|_| ChainError::Rpc(format!("stored sweep hash {text} is not a hash")))
}

fn parse_address(text: &str) -> Result<Address, ChainError> {
    text.parse()
        .map_err(|_| ChainError::Config(format!("{text} is not an address")))
}

fn fee_i64(value: u128) -> Result<i64, ChainError> {
    i64::try_from(value)
        .map_err(|_| ChainError::Config(format!("a fee of {value} wei per gas cannot be stored")))
}

impl Sweeper {
    pub fn new(
        config: SweeperConfig,
        rpc: Rpc,
        store: Store,
        catalog: LiveCatalog,
        signer: Arc<dyn DepositKeySigner>,
        hot_wallet: Address,
    ) -> Self {
        Sweeper {
            config,
            rpc,
            store,
            catalog,
            signer,
            hot_wallet,
            metrics: SweepMetrics::unregistered(),
            cursors: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn with_metrics(mut self, metrics: SweepMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs polls until `stop` resolves; errors are logged and retried after the interval.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            match self.poll_once().await {
                Ok(outcome) if outcome != SweepOutcome::default() => {
                    tracing::info!(chain = %self.config.chain, ?outcome, "sweeper poll");
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(chain = %self.config.chain, %error, "sweeper poll failed; retrying");
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    fn native_assets(&self) -> Vec<(AssetConfig, SweepPolicy)> {
        self.catalog
            .current()
            .iter()
            .filter(|a| a.chain == self.config.chain && a.contract.is_none())
            .filter_map(|a| self.config.policies.get(&a.symbol).map(|p| (a.clone(), *p)))
            .collect()
    }

    /// One bounded step: follow the open sweeps, then plan new ones.
    pub async fn poll_once(&self) -> Result<SweepOutcome, ChainError> {
        let mut outcome = SweepOutcome::default();
        let assets = self.native_assets();
        if assets.is_empty() {
            return Ok(outcome);
        }
        let chain_id = self.rpc.chain_id().await?;
        let open = self.store.open_sweeps(&self.config.chain, 500).await?;
        let busy: HashSet<String> = open.iter().map(|s| s.address.clone()).collect();
        for sweep in open {
            let Some(asset) = assets.iter().find(|(a, _)| a.symbol == sweep.asset) else {
                continue;
            };
            self.advance(&asset.0, sweep, chain_id, &mut outcome).await?;
        }
        for (asset, policy) in &assets {
            self.plan_round(asset, policy, &busy, chain_id, &mut outcome)
                .await?;
        }
        Ok(outcome)
    }

    async fn fees(&self) -> Result<SweepFees, ChainError> {
        let head = self.rpc.head().await?;
        let block = self
            .rpc
            .block(head)
            .await?
            .ok_or_else(|| ChainError::Rpc(format!("the node does not have its head block {head}")))?;
        Ok(SweepFees {
            base_fee_per_gas: u128::from(block.header.base_fee_per_gas.unwrap_or(0)),
            max_priority_fee_per_gas: self.config.max_priority_fee_per_gas,
        })
    }

    async fn plan_round(
        &self,
        asset: &AssetConfig,
        policy: &SweepPolicy,
        busy: &HashSet<String>,
        chain_id: u64,
        outcome: &mut SweepOutcome,
    ) -> Result<(), ChainError> {
        let fees = self.fees().await?;
        if let Err(NoSweep::GasAboveCeiling { price, ceiling }) = check_ceiling(policy, fees) {
            tracing::info!(asset = %asset.symbol, price, ceiling, "sweep round skipped: gas above the ceiling");
            self.metrics.count(&asset.symbol, "gas_above_ceiling");
            outcome.skipped_for_gas = true;
            return Ok(());
        }
        let after = self
            .cursors
            .lock()
            .expect("not poisoned")
            .get(&asset.symbol)
            .cloned();
        let batch = u32::try_from(policy.batch_max.clamp(1, 1000)).unwrap_or(1000);
        let mut page = self
            .store
            .deposit_address_docs_page(&self.config.chain, &asset.symbol, after.as_deref(), batch)
            .await?;
        if page.is_empty() && after.is_some() {
            page = self
                .store
                .deposit_address_docs_page(&self.config.chain, &asset.symbol, None, batch)
                .await?;
        }
        {
            let mut cursors = self.cursors.lock().expect("not poisoned");
            match page.last() {
                Some(last) => cursors.insert(asset.symbol.clone(), last.address.clone()),
                None => cursors.remove(&asset.symbol),
            };
        }
        // Only what has its confirmations is swept: the balance at the confirmed block, capped by
        // the latest one.
        let head = self.rpc.head().await?;
        let confirmed_block = head.saturating_sub(u64::from(asset.confirmations_required.max(1)) - 1);
        for record in page {
            if busy.contains(&record.address) {
                continue;
            }
            let address = parse_address(&record.address)?;
            let index = u32::try_from(record.index).map_err(|_| {
                ChainError::Derivation(format!("deposit index {} out of range", record.index))
            })?;
            if self.signer.address(index)? != address {
                return Err(ChainError::Config(format!(
                    "the deposit signer's key {index} is not {}: wrong xprv",
                    record.address
                )));
            }
            // The nonce and balance at the confirmed block, read together, and only if the address
            // sent nothing since: a sweep mined after that block (by this or another replica)
            // makes the balance there stale, so the address waits for the next round. A sweep
            // signed and not yet mined has this very nonce: claiming it again is refused.
            let nonce = self.rpc.nonce_at(address, confirmed_block).await?;
            if self.rpc.latest_nonce(address).await? != nonce {
                continue;
            }
            let latest = self.rpc.balance(address).await?;
            let settled = self.rpc.balance_at(address, confirmed_block).await?;
            let balance = coffer_domain::Amount::from_atomic(latest.min(settled));
            let plan = match plan_native(policy, balance, fees) {
                Ok(plan) => plan,
                Err(NoSweep::BelowMinimum | NoSweep::GasExceedsBalance) => {
                    if !balance.is_zero() {
                        self.metrics.count(&asset.symbol, "dust");
                        outcome.dust += 1;
                    }
                    continue;
                }
                Err(other) => {
                    tracing::info!(asset = %asset.symbol, %other, "not swept");
                    continue;
                }
            };
            let now = coffer_store::codec::now();
            let sweep = SweepDoc {
                id: SweepDoc::key(&self.config.chain, &record.address, nonce),
                chain: self.config.chain.clone(),
                asset: asset.symbol.clone(),
                address: record.address.clone(),
                index: record.index,
                nonce: i64::try_from(nonce).map_err(|_| ChainError::Rpc("nonce above i64".into()))?,
                to: format!("{:#x}", self.hot_wallet),
                value: plan.value.to_string(),
                gas_limit: i64::try_from(plan.gas_limit).unwrap_or(i64::MAX),
                max_fee_per_gas: fee_i64(plan.max_fee_per_gas)?,
                max_priority_fee_per_gas: fee_i64(plan.max_priority_fee_per_gas)?,
                state: SweepState::Planned.as_str().to_string(),
                raw_tx: None,
                tx_hash: None,
                gas_used: None,
                effective_gas_price: None,
                fee: None,
                fee_transaction_id: None,
                created_at: now,
                updated_at: now,
            };
            match self.store.claim_sweep(&sweep).await {
                Ok(()) => {}
                Err(StoreError::AlreadyExists) => {
                    self.metrics.count(&asset.symbol, "claimed_elsewhere");
                    outcome.claimed_elsewhere += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            self.advance(asset, sweep, chain_id, outcome).await?;
        }
        Ok(())
    }

    /// Moves one stored sweep on as far as it can go now.
    async fn advance(
        &self,
        asset: &AssetConfig,
        mut sweep: SweepDoc,
        chain_id: u64,
        outcome: &mut SweepOutcome,
    ) -> Result<(), ChainError> {
        if sweep.state() == Some(SweepState::Planned) {
            let tx = TxEip1559 {
                chain_id,
                nonce: sweep.nonce.max(0) as u64,
                gas_limit: sweep.gas_limit.max(0) as u64,
                max_fee_per_gas: sweep.max_fee_per_gas.max(0) as u128,
                max_priority_fee_per_gas: sweep.max_priority_fee_per_gas.max(0) as u128,
                to: TxKind::Call(parse_address(&sweep.to)?),
                value: sweep
                    .value
                    .parse::<U256>()
                    .map_err(|_| ChainError::Rpc(format!("sweep {} has a bad value", sweep.id)))?,
                ..Default::default()
            };
            let index = u32::try_from(sweep.index)
                .map_err(|_| ChainError::Derivation(format!("deposit index {} out of range", sweep.index)))?;
            let signed = self.signer.sign(index, tx).await?;
            let raw = format!("0x{}", hex::encode(&signed.raw));
            let hash = format!("{:#x}", signed.hash);
            match self.store.record_sweep_signed(&sweep.id, &raw, &hash).await {
                Ok(()) => {}
                // Another replica signed it (deterministically the same bytes) or moved it on.
                Err(StoreError::StateConflict) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            self.metrics.count(&asset.symbol, "signed");
            outcome.signed += 1;
            sweep.state = SweepState::Signed.as_str().to_string();
            sweep.raw_tx = Some(raw);
            sweep.tx_hash = Some(hash);
        }
        let hash = match sweep.tx_hash.as_deref() {
            Some(hash) => hex_hash(hash)?,
            None => return Ok(()),
        };
        if sweep.state() == Some(SweepState::Signed) {
            let raw = hex::decode(
                sweep
                    .raw_tx
                    .as_deref()
                    .unwrap_or_default()
                    .trim_start_matches("0x"),
            )
            .map_err(|_| ChainError::Rpc(format!("stored sweep {} is not hex", sweep.id)))?;
            if let Err(error) = self.rpc.send_raw(&raw).await {
                // Lost answers and "already known" alike: the receipt decides.
                if self.rpc.transaction(hash).await?.is_none() {
                    tracing::warn!(sweep = %sweep.id, %error, "sweep not accepted; re-sent next poll");
                    self.metrics.count(&asset.symbol, "send_error");
                    return Ok(());
                }
            }
            match self
                .store
                .move_sweep(&sweep.id, SweepState::Signed, SweepState::Broadcasted)
                .await
            {
                Ok(()) | Err(StoreError::StateConflict) => {}
                Err(e) => return Err(e.into()),
            }
            outcome.broadcast += 1;
            sweep.state = SweepState::Broadcasted.as_str().to_string();
        }
        if sweep.state() != Some(SweepState::Broadcasted) {
            return Ok(());
        }
        let Some(receipt) = self.rpc.receipt(hash).await? else {
            return Ok(());
        };
        let Some(mined_in) = receipt.block_number else {
            return Ok(());
        };
        let head = self.rpc.head().await?;
        if head.saturating_sub(mined_in) + 1 < u64::from(asset.confirmations_required.max(1)) {
            return Ok(());
        }
        let to = if receipt.status() {
            SweepState::Confirmed
        } else {
            SweepState::Failed
        };
        let mined = MinedSweep {
            sweep_id: &sweep.id,
            tx_hash: sweep.tx_hash.as_deref(),
            to: &sweep.to,
            gas_used: receipt.gas_used,
            effective_gas_price: receipt.effective_gas_price,
        };
        let origin = coffer_domain::Origin {
            transaction_id: coffer_store::new_id(),
            now: chrono::Utc::now(),
            initiated_by: "sweeper".to_string(),
        };
        let fee = plan_gas_fee(origin, &mined, asset)
            .map_err(|e| ChainError::Config(format!("booking sweep gas: {e}")))?;
        match self
            .store
            .finish_sweep(
                &sweep,
                SweepState::Broadcasted,
                to,
                receipt.gas_used,
                receipt.effective_gas_price,
                fee,
            )
            .await
        {
            Ok(()) => {}
            Err(StoreError::StateConflict) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if to == SweepState::Confirmed {
            self.metrics.count(&asset.symbol, "confirmed");
            outcome.confirmed += 1;
        } else {
            self.metrics.count(&asset.symbol, "failed");
            outcome.failed += 1;
        }
        Ok(())
    }
}
