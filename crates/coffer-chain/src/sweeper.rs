//! The sweeper: moves what deposit addresses hold to the hot wallet, on each asset's policy
//! (docs/chain.md, "Sweeping deposit addresses"): the chain's coin and its ERC-20 tokens.
//!
//! ```text
//! (address, nonce) ──claim (insert)──► Planned ──sign+store──► Signed ──send──► Broadcasted
//! Broadcasted ──receipt + confirmations──► Confirmed (gas → fees) | Failed (reverted; gas → fees)
//! token sweep lacking gas: Planned ──hot wallet signs gas funding (its next nonce)──► Funding
//!   Funding ──funding confirmed (its gas → fees)──► Funded ──sign+store──► Signed ──► …
//! Funding | Broadcasted (coin) ──unmined past stuck_after──► re-signed, same nonce, higher fees
//! ```
//!
//! A stuck funding (hot-wallet signer) or coin sweep (deposit key; its value lowered so the higher
//! gas still fits, `coffer_domain::sweep::replan_native`) is replaced with the fees of the
//! withdrawals' rule (`coffer_domain::replacement::next_fees`), stored conditionally on the
//! replaced version still being the latest, then sent. Every version is kept; the one mined (any of
//! them: they share a nonce) is booked. Token sweeps are not replaced (more gas would need another
//! funding).
//!
//! The gas funding is signed by the broadcaster's own [`Signer`] and takes its nonce from the
//! same stored nonce record as withdrawals, so the hot wallet's nonces never collide.
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
use alloy::primitives::{Bytes, TxKind, U256};
use alloy::rpc::types::TransactionReceipt;
use alloy::sol_types::SolCall;
use coffer_domain::gas::PaidGas;
use coffer_domain::replacement::{next_fees, Fees, NoReplacement, ReplacementPolicy};
use coffer_domain::sweep::{
    check_ceiling, plan_gas_fee, plan_native, plan_token, replan_native, NativeSweep, NoSweep, SweepFees,
    SweepPolicy, SweepState, NATIVE_TRANSFER_GAS,
};
use coffer_domain::{Amount, AssetConfig, LiveCatalog};
use coffer_store::sweeps::{FundingDoc, Leg, SweepDoc, TxVersion};
use coffer_store::{Store, StoreError};
use prometheus::{IntCounterVec, Opts, Registry};

use crate::broadcaster::{fees_of, transferCall};
use crate::rpc::Rpc;
use crate::signer::{SignedTx, Signer};
use crate::sweep_signer::DepositKeySigner;
use crate::ChainError;

/// Outcomes of `coffer_sweeps_total{asset,outcome}`.
pub const SWEEP_OUTCOMES: [&str; 10] = [
    "funded",
    "replaced",
    "replacement_unaffordable",
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
                    "Sweeps of deposit addresses to the hot wallet, by outcome: funded (a token sweep's gas sent by the hot wallet and confirmed), replaced (a stuck funding or coin sweep re-signed with the same nonce and higher fees), replacement_unaffordable (a stuck coin sweep's balance no longer covers the higher gas: not replaced), signed, confirmed, failed (reverted), dust (below the minimum), gas_above_ceiling (round skipped), claimed_elsewhere (another replica), send_error.",
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
    /// When a sent funding or coin sweep counts as stuck, and the highest fee a replacement may
    /// offer: the broadcaster's policy.
    pub replacement: ReplacementPolicy,
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Gas fundings signed (token sweeps).
    pub funding: u64,
    pub signed: u64,
    pub broadcast: u64,
    pub confirmed: u64,
    pub failed: u64,
    pub dust: u64,
    pub skipped_for_gas: bool,
    pub claimed_elsewhere: u64,
    /// Stuck fundings and coin sweeps re-signed with higher fees.
    pub replaced: u64,
}

pub struct Sweeper {
    config: SweeperConfig,
    rpc: Rpc,
    store: Store,
    catalog: LiveCatalog,
    signer: Arc<dyn DepositKeySigner>,
    /// The broadcaster's signer of the hot wallet: sweeps go to it and it funds token gas.
    hot: Arc<dyn Signer>,
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

fn raw_bytes(id: &str, raw: &str) -> Result<Vec<u8>, ChainError> {
    hex::decode(raw.trim_start_matches("0x"))
        .map_err(|_| ChainError::Rpc(format!("stored transaction of sweep {id} is not hex")))
}

fn wei(id: &str, text: &str) -> Result<U256, ChainError> {
    text.parse::<U256>()
        .map_err(|_| ChainError::Rpc(format!("sweep {id} has a bad amount {text}")))
}

/// What the chain shows of a leg's versions.
enum Seen {
    /// None is mined (the latest was re-sent if the node had lost it).
    Unmined,
    /// One is mined, without the coin's confirmations yet.
    Mined,
    /// This version is mined with its confirmations.
    Settled(String, Box<TransactionReceipt>),
}

/// What following a leg did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Followed {
    /// No version is mined: it may be stuck.
    Unmined,
    /// Mined and waiting for confirmations, or recorded by another replica meanwhile.
    Pending,
    /// Recorded: the leg succeeded or reverted.
    Finished { succeeded: bool },
}

/// A signed version as stored.
fn version_of(signed: &SignedTx, value: &str, fees: Fees) -> Result<TxVersion, ChainError> {
    Ok(TxVersion {
        tx_hash: format!("{:#x}", signed.hash),
        raw_tx: format!("0x{}", hex::encode(&signed.raw)),
        value: value.to_string(),
        max_fee_per_gas: fee_i64(fees.max_fee_per_gas)?,
        max_priority_fee_per_gas: fee_i64(fees.max_priority_fee_per_gas)?,
        signed_at: Some(coffer_store::codec::now()),
    })
}

/// The hot wallet's coin transfer of `value` to deposit address `to` at `nonce`: every version
/// of a gas funding (the first and its replacements) differs only in `fees`.
fn funding_tx(chain_id: u64, nonce: i64, to: &str, value: U256, fees: Fees) -> Result<TxEip1559, ChainError> {
    Ok(TxEip1559 {
        chain_id,
        nonce: nonce.max(0) as u64,
        gas_limit: NATIVE_TRANSFER_GAS,
        max_fee_per_gas: fees.max_fee_per_gas,
        max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
        to: TxKind::Call(parse_address(to)?),
        value,
        ..Default::default()
    })
}

/// What one address's sweep will send, before it is claimed.
struct Plan {
    value: Amount,
    gas_limit: u64,
    max_fee_per_gas: u128,
    max_priority_fee_per_gas: u128,
    funding: Option<Amount>,
}

impl Sweeper {
    pub fn new(
        config: SweeperConfig,
        rpc: Rpc,
        store: Store,
        catalog: LiveCatalog,
        signer: Arc<dyn DepositKeySigner>,
        hot: Arc<dyn Signer>,
    ) -> Self {
        Sweeper {
            config,
            rpc,
            store,
            catalog,
            signer,
            hot,
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

    /// The chain's coin (gas is paid and booked in it) and the swept assets with their policy.
    /// Without the coin in the catalog nothing is swept: no gas could be booked.
    fn assets(&self) -> Option<(AssetConfig, Vec<(AssetConfig, SweepPolicy)>)> {
        let catalog = self.catalog.current();
        let on_chain = || catalog.iter().filter(|a| a.chain == self.config.chain);
        let coin = on_chain().find(|a| a.contract.is_none())?.clone();
        let swept = on_chain()
            .filter_map(|a| self.config.policies.get(&a.symbol).map(|p| (a.clone(), *p)))
            .collect();
        Some((coin, swept))
    }

    /// One bounded step: follow the open sweeps, then plan new ones.
    pub async fn poll_once(&self) -> Result<SweepOutcome, ChainError> {
        let mut outcome = SweepOutcome::default();
        let Some((coin, assets)) = self.assets() else {
            return Ok(outcome);
        };
        let chain_id = self.rpc.chain_id().await?;
        let open = self.store.open_sweeps(&self.config.chain, 500).await?;
        let busy: HashSet<String> = open.iter().map(|s| s.address.clone()).collect();
        // Every open sweep is followed, whatever the policies say now: an asset no longer swept
        // (or gone from the catalog) may have a gas funding holding one of the hot wallet's
        // nonces, and later withdrawals wait behind it. Everything a sweep needs is stored on it.
        for sweep in open {
            let id = sweep.id.clone();
            if let Err(error) = self.advance(&coin, sweep, chain_id, &mut outcome).await {
                // One bad sweep does not hold up the others (a funding among them).
                tracing::warn!(sweep = %id, %error, "sweep not advanced; retried next poll");
            }
        }
        for (asset, policy) in &assets {
            self.plan_round(asset, policy, &coin, &busy, chain_id, &mut outcome)
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

    /// The next page of `asset`'s deposit addresses, round robin over rounds.
    async fn next_page(
        &self,
        asset: &AssetConfig,
        policy: &SweepPolicy,
    ) -> Result<Vec<coffer_store::chain::DepositAddressDoc>, ChainError> {
        let after = self
            .cursors
            .lock()
            .expect("not poisoned")
            .get(&asset.symbol)
            .cloned();
        let batch = u32::try_from(policy.batch_max.clamp(1, 1000)).unwrap_or(1000);
        let mut page = self
            .store
            .deposit_address_docs_page(&self.config.chain, Some(&asset.symbol), after.as_deref(), batch)
            .await?;
        if page.is_empty() && after.is_some() {
            page = self
                .store
                .deposit_address_docs_page(&self.config.chain, Some(&asset.symbol), None, batch)
                .await?;
        }
        let mut cursors = self.cursors.lock().expect("not poisoned");
        match page.last() {
            Some(last) => cursors.insert(asset.symbol.clone(), last.address.clone()),
            None => cursors.remove(&asset.symbol),
        };
        Ok(page)
    }

    async fn plan_round(
        &self,
        asset: &AssetConfig,
        policy: &SweepPolicy,
        coin: &AssetConfig,
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
        let page = self.next_page(asset, policy).await?;
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
            let Some(plan) = self
                .plan_address(asset, policy, address, confirmed_block, fees, outcome)
                .await?
            else {
                continue;
            };
            let sweep = self.planned_doc(asset, &record, nonce, &plan)?;
            match self.store.claim_sweep(&sweep).await {
                Ok(()) => {}
                Err(StoreError::AlreadyExists) => {
                    self.metrics.count(&asset.symbol, "claimed_elsewhere");
                    outcome.claimed_elsewhere += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            self.advance(coin, sweep, chain_id, outcome).await?;
        }
        Ok(())
    }

    /// What `address` holds at `block`, capped by what it holds now: of the coin, or of `token`.
    async fn settled_balance(
        &self,
        address: Address,
        token: Option<Address>,
        block: u64,
    ) -> Result<Amount, ChainError> {
        let (latest, settled) = match token {
            None => (
                self.rpc.balance(address).await?,
                self.rpc.balance_at(address, block).await?,
            ),
            Some(token) => {
                let head = self.rpc.head().await?;
                (
                    self.rpc.token_balance_at(token, address, head).await?,
                    self.rpc.token_balance_at(token, address, block).await?,
                )
            }
        };
        Ok(Amount::from_atomic(latest.min(settled)))
    }

    /// The domain's plan for one address, or `None` (dust, or not this round).
    async fn plan_address(
        &self,
        asset: &AssetConfig,
        policy: &SweepPolicy,
        address: Address,
        block: u64,
        fees: SweepFees,
        outcome: &mut SweepOutcome,
    ) -> Result<Option<Plan>, ChainError> {
        let token = asset.contract.as_deref().map(parse_address).transpose()?;
        let balance = self.settled_balance(address, token, block).await?;
        let planned = match token {
            None => plan_native(policy, balance, fees).map(|p| Plan {
                value: p.value,
                gas_limit: p.gas_limit,
                max_fee_per_gas: p.max_fee_per_gas,
                max_priority_fee_per_gas: p.max_priority_fee_per_gas,
                funding: None,
            }),
            Some(_) => {
                let coin = self.settled_balance(address, None, block).await?;
                plan_token(policy, balance, coin, fees).map(|p| Plan {
                    value: p.amount,
                    gas_limit: p.gas_limit,
                    max_fee_per_gas: p.max_fee_per_gas,
                    max_priority_fee_per_gas: p.max_priority_fee_per_gas,
                    funding: p.funding,
                })
            }
        };
        match planned {
            Ok(plan) => Ok(Some(plan)),
            Err(NoSweep::BelowMinimum | NoSweep::GasExceedsBalance) => {
                if !balance.is_zero() {
                    self.metrics.count(&asset.symbol, "dust");
                    outcome.dust += 1;
                }
                Ok(None)
            }
            Err(other) => {
                tracing::info!(asset = %asset.symbol, %other, "not swept");
                Ok(None)
            }
        }
    }

    fn planned_doc(
        &self,
        asset: &AssetConfig,
        record: &coffer_store::chain::DepositAddressDoc,
        nonce: u64,
        plan: &Plan,
    ) -> Result<SweepDoc, ChainError> {
        let now = coffer_store::codec::now();
        Ok(SweepDoc {
            id: SweepDoc::key(&self.config.chain, &record.address, nonce),
            chain: self.config.chain.clone(),
            asset: asset.symbol.clone(),
            address: record.address.clone(),
            index: record.index,
            nonce: i64::try_from(nonce).map_err(|_| ChainError::Rpc("nonce above i64".into()))?,
            to: format!("{:#x}", self.hot.address()),
            value: plan.value.to_string(),
            contract: asset.contract.as_ref().map(|c| c.to_lowercase()),
            funding_needed: plan.funding.map(|f| f.to_string()),
            funding: None,
            gas_limit: i64::try_from(plan.gas_limit).unwrap_or(i64::MAX),
            max_fee_per_gas: fee_i64(plan.max_fee_per_gas)?,
            max_priority_fee_per_gas: fee_i64(plan.max_priority_fee_per_gas)?,
            state: SweepState::Planned.as_str().to_string(),
            raw_tx: None,
            tx_hash: None,
            signed_at: None,
            replaced: Vec::new(),
            mined_tx_hash: None,
            gas_used: None,
            effective_gas_price: None,
            fee: None,
            fee_transaction_id: None,
            created_at: now,
            updated_at: now,
        })
    }

    /// Moves one stored sweep on as far as it can go now.
    async fn advance(
        &self,
        coin: &AssetConfig,
        mut sweep: SweepDoc,
        chain_id: u64,
        outcome: &mut SweepOutcome,
    ) -> Result<(), ChainError> {
        if sweep.state() == Some(SweepState::Planned)
            && sweep.funding_needed.is_some()
            && !self.fund(&mut sweep, chain_id, outcome).await?
        {
            return Ok(());
        }
        if sweep.state() == Some(SweepState::Funding) {
            let Some(funding) = sweep.funding.clone() else {
                return Err(ChainError::Store(StoreError::Corrupt(format!(
                    "sweep {} is funding without a funding transaction",
                    sweep.id
                ))));
            };
            match self
                .follow(coin, &mut sweep, Leg::Funding, &funding.versions())
                .await?
            {
                Followed::Finished { succeeded: true } => {}
                Followed::Unmined => {
                    self.replace_funding(&sweep, &funding, chain_id, outcome).await?;
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
        if matches!(sweep.state(), Some(SweepState::Planned | SweepState::Funded))
            && !self.sign(&mut sweep, chain_id, outcome).await?
        {
            return Ok(());
        }
        let (Some(hash), Some(raw)) = (sweep.tx_hash.clone(), sweep.raw_tx.clone()) else {
            return Ok(());
        };
        if sweep.state() == Some(SweepState::Signed) {
            self.broadcast(&mut sweep, &hash, &raw, outcome).await?;
        }
        if sweep.state() == Some(SweepState::Broadcasted) {
            let versions = sweep.versions();
            if self.follow(coin, &mut sweep, Leg::Sweep, &versions).await? == Followed::Unmined {
                self.replace_sweep(&sweep, chain_id, outcome).await?;
                return Ok(());
            }
            match sweep.state() {
                Some(SweepState::Confirmed) => {
                    self.metrics.count(&sweep.asset, "confirmed");
                    outcome.confirmed += 1;
                }
                Some(SweepState::Failed) => {
                    self.metrics.count(&sweep.asset, "failed");
                    outcome.failed += 1;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The sweep's own transaction: the coin to the hot wallet, or the token's `transfer` to it.
    fn payload(&self, sweep: &SweepDoc, chain_id: u64) -> Result<TxEip1559, ChainError> {
        let hot = parse_address(&sweep.to)?;
        let value = wei(&sweep.id, &sweep.value)?;
        let (to, value, input) = match sweep.contract.as_deref() {
            None => (hot, value, Bytes::new()),
            Some(contract) => {
                let call = transferCall {
                    to: hot,
                    amount: value,
                };
                (
                    parse_address(contract)?,
                    U256::ZERO,
                    Bytes::from(call.abi_encode()),
                )
            }
        };
        Ok(TxEip1559 {
            chain_id,
            nonce: sweep.nonce.max(0) as u64,
            gas_limit: sweep.gas_limit.max(0) as u64,
            max_fee_per_gas: sweep.max_fee_per_gas.max(0) as u128,
            max_priority_fee_per_gas: sweep.max_priority_fee_per_gas.max(0) as u128,
            to: TxKind::Call(to),
            value,
            input,
            ..Default::default()
        })
    }

    /// Signs the sweep with its deposit key and stores the bytes (not sent yet). Returns whether
    /// this process stored them (another replica may have first).
    async fn sign(
        &self,
        sweep: &mut SweepDoc,
        chain_id: u64,
        outcome: &mut SweepOutcome,
    ) -> Result<bool, ChainError> {
        let index = u32::try_from(sweep.index)
            .map_err(|_| ChainError::Derivation(format!("deposit index {} out of range", sweep.index)))?;
        let signed = self.signer.sign(index, self.payload(sweep, chain_id)?).await?;
        let raw = format!("0x{}", hex::encode(&signed.raw));
        let hash = format!("{:#x}", signed.hash);
        match self.store.record_sweep_signed(&sweep.id, &raw, &hash).await {
            Ok(()) => {}
            // Another replica signed it (deterministically the same bytes) or moved it on.
            Err(StoreError::StateConflict) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        self.metrics.count(&sweep.asset, "signed");
        outcome.signed += 1;
        sweep.state = SweepState::Signed.as_str().to_string();
        sweep.raw_tx = Some(raw);
        sweep.tx_hash = Some(hash);
        sweep.signed_at = Some(coffer_store::codec::now());
        Ok(true)
    }

    /// Sends the stored bytes and moves the sweep to Broadcasted once the node knows them.
    async fn broadcast(
        &self,
        sweep: &mut SweepDoc,
        hash: &str,
        raw: &str,
        outcome: &mut SweepOutcome,
    ) -> Result<(), ChainError> {
        if let Err(error) = self.rpc.send_raw(&raw_bytes(&sweep.id, raw)?).await {
            // Lost answers and "already known" alike: the node's knowledge of the hash decides.
            if self.rpc.transaction(hex_hash(hash)?).await?.is_none() {
                tracing::warn!(sweep = %sweep.id, %error, "sweep not accepted; re-sent next poll");
                self.metrics.count(&sweep.asset, "send_error");
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
        Ok(())
    }

    /// Signs the hot wallet's gas funding of a planned token sweep with the hot wallet's next
    /// nonce, stores it with that nonce (the broadcaster's record), then sends it. Returns
    /// whether the sweep is now funding.
    async fn fund(
        &self,
        sweep: &mut SweepDoc,
        chain_id: u64,
        outcome: &mut SweepOutcome,
    ) -> Result<bool, ChainError> {
        let value = wei(&sweep.id, sweep.funding_needed.as_deref().unwrap_or("0"))?;
        let from = self.hot.address();
        let from_text = format!("{from:#x}");
        let recorded = self.store.recorded_nonce(&self.config.chain, &from_text).await?;
        // Someone may have used the hot wallet outside Coffer: never go below the chain's count.
        let nonce = recorded
            .unwrap_or(0)
            .max(self.rpc.latest_nonce(from).await? as i64);
        let suggested = self.fees().await?;
        let fees = Fees {
            max_fee_per_gas: suggested
                .max_fee_per_gas()
                .ok_or(ChainError::Config("fee overflow".into()))?,
            max_priority_fee_per_gas: suggested.max_priority_fee_per_gas,
        };
        let tx = funding_tx(chain_id, nonce, &sweep.address, value, fees)?;
        let signed = self.hot.sign(tx).await?;
        let funding = FundingDoc::first(from_text, nonce, version_of(&signed, &value.to_string(), fees)?);
        match self
            .store
            .record_sweep_funding(&self.config.chain, &sweep.id, recorded, &funding)
            .await
        {
            Ok(()) => {}
            // The sweep moved on, or a withdrawal (or another sweep) took the nonce first: this
            // signature is dropped unsent and the next poll starts again from what is stored.
            Err(StoreError::StateConflict) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(sweep = %sweep.id, tx_hash = %funding.tx_hash, nonce, "sweep gas funding signed and stored");
        outcome.funding += 1;
        if let Err(error) = self.rpc.send_raw(&signed.raw).await {
            tracing::warn!(sweep = %sweep.id, %error, "gas funding not accepted yet; re-sent next poll");
        }
        sweep.state = SweepState::Funding.as_str().to_string();
        sweep.funding = Some(funding);
        Ok(true)
    }

    /// The fees of the next version of a leg whose latest version offers `latest` and was signed
    /// at `signed_at`, once it is stuck: the withdrawals' replacement rule
    /// ([`next_fees`]: at least +12.5 % on both fields, under the cap), against the sweeper's
    /// own suggestion at today's base fee. `None`: not stuck yet, or not replaced (logged).
    async fn replacement_fees(
        &self,
        sweep_id: &str,
        latest: Fees,
        signed_at: coffer_store::codec::Time,
        versions: usize,
    ) -> Result<Option<Fees>, ChainError> {
        let policy = &self.config.replacement;
        let unmined_for = (coffer_store::codec::now() - signed_at)
            .to_std()
            .unwrap_or_default();
        if unmined_for < policy.stuck_after {
            return Ok(None);
        }
        let now = self.fees().await?;
        let suggested = Fees {
            max_fee_per_gas: now.max_fee_per_gas().unwrap_or(u128::MAX),
            max_priority_fee_per_gas: now.max_priority_fee_per_gas,
        };
        match next_fees(policy, latest, suggested, unmined_for, versions) {
            Ok(fees) => Ok(Some(fees)),
            Err(NoReplacement::NotStuck) => Ok(None),
            Err(why) => {
                tracing::debug!(sweep = %sweep_id, %why, "stuck sweep not replaced");
                Ok(None)
            }
        }
    }

    /// Whether `from`'s transaction count at the latest block is past `nonce`: then a version is
    /// mined (its receipt is read next poll) or another transaction took the nonce; either way
    /// a replacement could never be mined.
    async fn nonce_spent(&self, from: Address, nonce: i64) -> Result<bool, ChainError> {
        Ok(self.rpc.latest_nonce(from).await? > nonce.max(0) as u64)
    }

    /// Counts and logs a stored replacement, then sends it (a refusal is logged: the next poll
    /// re-sends the latest version while the node does not know it).
    async fn send_replacement(
        &self,
        sweep: &SweepDoc,
        what: &str,
        signed: &SignedTx,
        outcome: &mut SweepOutcome,
    ) {
        self.metrics.count(&sweep.asset, "replaced");
        outcome.replaced += 1;
        let tx_hash = format!("{:#x}", signed.hash);
        tracing::info!(sweep = %sweep.id, %tx_hash, what, "stuck sweep transaction re-signed with the same nonce and higher fees");
        if let Err(error) = self.rpc.send_raw(&signed.raw).await {
            tracing::warn!(sweep = %sweep.id, what, %error, "replacement not accepted yet; re-sent next poll");
        }
    }

    /// Re-signs a stuck gas funding with the hot wallet's signer: the same nonce and value, the
    /// fees of the replacement rule. Stored (only while `funding`'s latest version is still the
    /// latest: of two replicas one stores, the other drops its signature unsent), then sent.
    async fn replace_funding(
        &self,
        sweep: &SweepDoc,
        funding: &FundingDoc,
        chain_id: u64,
        outcome: &mut SweepOutcome,
    ) -> Result<(), ChainError> {
        if format!("{:#x}", self.hot.address()) != funding.from {
            tracing::warn!(sweep = %sweep.id, from = %funding.from, "stuck funding from another hot wallet: not replaced");
            return Ok(());
        }
        if self.nonce_spent(self.hot.address(), funding.nonce).await? {
            return Ok(());
        }
        let latest = fees_of(funding.max_fee_per_gas, funding.max_priority_fee_per_gas);
        let signed_at = funding.signed_at.unwrap_or(sweep.updated_at);
        let versions = funding.replaced.len() + 1;
        let Some(fees) = self
            .replacement_fees(&sweep.id, latest, signed_at, versions)
            .await?
        else {
            return Ok(());
        };
        let value = wei(&sweep.id, &funding.value)?;
        let tx = funding_tx(chain_id, funding.nonce, &sweep.address, value, fees)?;
        let signed = self.hot.sign(tx).await?;
        let next = funding.replaced_by(version_of(&signed, &funding.value, fees)?);
        match self
            .store
            .record_funding_replacement(&sweep.id, &funding.tx_hash, &next)
            .await
        {
            Ok(()) => {}
            Err(StoreError::StateConflict) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        self.send_replacement(sweep, "gas funding", &signed, outcome)
            .await;
        Ok(())
    }

    /// Re-signs a stuck coin sweep with its deposit key: the same nonce, the fees of the
    /// replacement rule, and a value lowered so the higher gas still fits the balance
    /// ([`replan_native`]; when nothing would be left it is not replaced). Stored (only while its
    /// latest version is still the latest), then sent. Token sweeps are not replaced: more gas
    /// would need another funding.
    async fn replace_sweep(
        &self,
        sweep: &SweepDoc,
        chain_id: u64,
        outcome: &mut SweepOutcome,
    ) -> Result<(), ChainError> {
        let Some(latest) = sweep.latest().filter(|_| sweep.contract.is_none()) else {
            return Ok(());
        };
        if self
            .nonce_spent(parse_address(&sweep.address)?, sweep.nonce)
            .await?
        {
            return Ok(());
        }
        let signed_at = sweep.signed_at.unwrap_or(sweep.updated_at);
        let current = fees_of(latest.max_fee_per_gas, latest.max_priority_fee_per_gas);
        let versions = sweep.replaced.len() + 1;
        let Some(fees) = self
            .replacement_fees(&sweep.id, current, signed_at, versions)
            .await?
        else {
            return Ok(());
        };
        let stuck = NativeSweep {
            value: Amount::from_atomic(wei(&sweep.id, &sweep.value)?),
            gas_limit: sweep.gas_limit.max(0) as u64,
            max_fee_per_gas: current.max_fee_per_gas,
            max_priority_fee_per_gas: current.max_priority_fee_per_gas,
        };
        let balance = Amount::from_atomic(self.rpc.balance(parse_address(&sweep.address)?).await?);
        let plan = match replan_native(&stuck, balance, fees) {
            Ok(plan) => plan,
            Err(why) => {
                tracing::warn!(sweep = %sweep.id, %why, "stuck sweep not replaced: its balance does not cover the higher gas");
                self.metrics.count(&sweep.asset, "replacement_unaffordable");
                return Ok(());
            }
        };
        let mut next = sweep.clone();
        next.value = plan.value.to_string();
        next.max_fee_per_gas = fee_i64(plan.max_fee_per_gas)?;
        next.max_priority_fee_per_gas = fee_i64(plan.max_priority_fee_per_gas)?;
        let index = u32::try_from(sweep.index)
            .map_err(|_| ChainError::Derivation(format!("deposit index {} out of range", sweep.index)))?;
        let signed = self.signer.sign(index, self.payload(&next, chain_id)?).await?;
        let version = version_of(&signed, &next.value, fees)?;
        match self.store.record_sweep_replacement(sweep, &version).await {
            Ok(()) => {}
            Err(StoreError::StateConflict) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        self.send_replacement(sweep, "sweep", &signed, outcome).await;
        Ok(())
    }

    /// Which of `versions` (all spending one nonce) the chain mined, with its receipt once it has
    /// the coin's confirmations. When none is mined, the latest is re-sent if the node does not
    /// know it.
    async fn settled_receipt(
        &self,
        coin: &AssetConfig,
        sweep_id: &str,
        versions: &[TxVersion],
    ) -> Result<Seen, ChainError> {
        for version in versions.iter().take(coffer_store::sweeps::VERSIONS_MAX) {
            let Some(receipt) = self.rpc.receipt(hex_hash(&version.tx_hash)?).await? else {
                continue;
            };
            let Some(mined_in) = receipt.block_number else {
                return Ok(Seen::Mined);
            };
            let head = self.rpc.head().await?;
            let required = u64::from(coin.confirmations_required.max(1));
            if head.saturating_sub(mined_in) + 1 < required {
                return Ok(Seen::Mined);
            }
            return Ok(Seen::Settled(version.tx_hash.clone(), Box::new(receipt)));
        }
        if let Some(latest) = versions.last() {
            if self.rpc.transaction(hex_hash(&latest.tx_hash)?).await?.is_none() {
                let _ = self.rpc.send_raw(&raw_bytes(sweep_id, &latest.raw_tx)?).await;
            }
        }
        Ok(Seen::Unmined)
    }

    /// Follows a sent leg of the sweep (its gas funding, or itself; any of its versions) to the
    /// chain's verdict and books the gas the mined version's receipt reports with the new state.
    async fn follow(
        &self,
        coin: &AssetConfig,
        sweep: &mut SweepDoc,
        leg: Leg,
        versions: &[TxVersion],
    ) -> Result<Followed, ChainError> {
        let (hash, receipt) = match self.settled_receipt(coin, &sweep.id, versions).await? {
            Seen::Settled(hash, receipt) => (hash, receipt),
            Seen::Mined => return Ok(Followed::Pending),
            Seen::Unmined => return Ok(Followed::Unmined),
        };
        let hash = hash.as_str();
        let (from, to, key, paid) = match (leg, receipt.status()) {
            (Leg::Funding, ok) => {
                let to = if ok {
                    SweepState::Funded
                } else {
                    SweepState::Failed
                };
                (
                    SweepState::Funding,
                    to,
                    format!("{}:funding", sweep.id),
                    sweep.address.clone(),
                )
            }
            (Leg::Sweep, ok) => {
                let to = if ok {
                    SweepState::Confirmed
                } else {
                    SweepState::Failed
                };
                (SweepState::Broadcasted, to, sweep.id.clone(), sweep.to.clone())
            }
        };
        let mined = PaidGas {
            ledger_key: String::new(),
            tx_hash: Some(hash),
            to: &paid,
            gas_used: receipt.gas_used,
            effective_gas_price: receipt.effective_gas_price,
        };
        let origin = coffer_domain::Origin {
            transaction_id: coffer_store::new_id(),
            now: chrono::Utc::now(),
            initiated_by: "sweeper".to_string(),
        };
        let fee = plan_gas_fee(origin, &key, mined, coin)
            .map_err(|e| ChainError::Config(format!("booking sweep gas: {e}")))?;
        let gas = (receipt.gas_used, receipt.effective_gas_price);
        match self
            .store
            .finish_sweep(sweep, leg, from, to, hash, gas, fee)
            .await
        {
            Ok(()) => {}
            Err(StoreError::StateConflict) => return Ok(Followed::Pending),
            Err(e) => return Err(e.into()),
        }
        match (leg, to) {
            (Leg::Funding, SweepState::Funded) => self.metrics.count(&sweep.asset, "funded"),
            (Leg::Funding, _) => self.metrics.count(&sweep.asset, "failed"),
            _ => {}
        }
        sweep.state = to.as_str().to_string();
        Ok(Followed::Finished {
            succeeded: receipt.status(),
        })
    }
}
