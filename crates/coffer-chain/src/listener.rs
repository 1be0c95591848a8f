//! The chain listener: follows blocks from a checkpoint, records deposits at first sight, counts
//! confirmations against the asset's live threshold, credits once, and unwinds re-orgs.
//!
//! One [`Listener::poll_once`] is one bounded step (at most `max_blocks_per_poll` blocks), so the
//! loop and the tests drive the same code.

use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::rpc::types::Block;
use coffer_domain::{Amount, AssetConfig, LiveCatalog};
use coffer_store::chain::{BlockRef, ChainDepositDoc, DepositStatus, Observation, ObservedDeposit};
use coffer_store::Store;

use crate::deposits;
use crate::metrics::ChainMetrics;
use crate::rpc::Rpc;
use crate::ChainError;

/// The listener's settings (validated by the binary).
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub chain: String,
    /// Where to start when there is no checkpoint; `None` starts at the node's current head.
    pub start_block: Option<u64>,
    pub max_blocks_per_poll: u64,
    pub poll_interval: Duration,
    /// Confirming deposits examined per poll.
    pub confirming_page: u32,
}

impl ListenerConfig {
    pub fn new(chain: &str) -> Self {
        ListenerConfig {
            chain: chain.to_string(),
            start_block: None,
            max_blocks_per_poll: 50,
            poll_interval: Duration::from_secs(2),
            confirming_page: 500,
        }
    }
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollOutcome {
    pub blocks_processed: u64,
    /// The last processed block after the poll.
    pub tip: Option<u64>,
    pub deposits_recorded: u64,
    pub unmatched: u64,
    pub credited: u64,
    /// The common ancestor the cursor rolled back to, if a re-org was found.
    pub reorg_to: Option<u64>,
    /// Deposits gone from the chain (failed before credit, or reversed after).
    pub orphaned: u64,
    /// Of those, credited deposits reversed by a compensating entry.
    pub reversed: u64,
}

/// Where a recorded deposit's transaction is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Same,
    Moved,
    Gone,
}

pub struct Listener {
    config: ListenerConfig,
    rpc: Rpc,
    store: Store,
    catalog: LiveCatalog,
    metrics: ChainMetrics,
}

fn hex_of(hash: &B256) -> String {
    format!("{hash:#x}")
}

fn to_amount(value: U256) -> Amount {
    Amount::from_atomic(value)
}

impl Listener {
    pub fn new(config: ListenerConfig, rpc: Rpc, store: Store, catalog: LiveCatalog) -> Self {
        let metrics = ChainMetrics::unregistered();
        metrics.init_chain(&config.chain);
        Listener {
            config,
            rpc,
            store,
            catalog,
            metrics,
        }
    }

    /// Exports this listener's figures into `metrics` (the role's registry).
    pub fn with_metrics(mut self, metrics: ChainMetrics) -> Self {
        metrics.init_chain(&self.config.chain);
        self.metrics = metrics;
        self
    }

    pub fn config(&self) -> &ListenerConfig {
        &self.config
    }

    /// Runs polls until `stop` resolves; errors are logged and retried after the interval.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            match self.poll_once().await {
                Ok(outcome) if outcome.blocks_processed > 0 || outcome.reorg_to.is_some() => {
                    tracing::info!(chain = %self.config.chain, ?outcome, "poll");
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    self.metrics
                        .poll_errors
                        .with_label_values(&[&self.config.chain, "listener"])
                        .inc();
                    tracing::warn!(chain = %self.config.chain, %error, "poll failed; retrying")
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// One bounded step: new blocks (or a re-org), then confirmations.
    pub async fn poll_once(&self) -> Result<PollOutcome, ChainError> {
        let head = self.rpc.head().await?;
        let mut recent = self.load_recent(head).await?;
        let mut outcome = PollOutcome::default();
        // A re-org at or below our tip with no new height (the node re-mined the same number of
        // blocks) shows only here: our last block is no longer canonical.
        if let Some(last) = recent.last() {
            if self.rpc.block_hash(last.number as u64).await?.as_deref() != Some(last.hash.as_str()) {
                outcome.reorg_to = Some(self.unwind(&mut recent, &mut outcome).await?);
            }
        }
        let next = match (recent.last(), self.config.start_block) {
            (Some(last), _) => last.number as u64 + 1,
            (None, Some(start)) => start,
            (None, None) => head,
        };
        let last = head.min(next + self.config.max_blocks_per_poll.max(1) - 1);
        for number in next..=last {
            let Some(block) = self.rpc.block(number).await? else {
                break;
            };
            if let Some(previous) = recent.last() {
                if hex_of(&block.header.parent_hash) != previous.hash {
                    outcome.reorg_to = Some(self.unwind(&mut recent, &mut outcome).await?);
                    break;
                }
            }
            self.scan_block(&block, &mut outcome).await?;
            // The block is scanned and its deposits recorded; its checkpoint is not saved yet.
            coffer_telemetry::faults::point("listener.mid_poll");
            recent.push(BlockRef {
                number: number as i64,
                hash: hex_of(&block.header.hash),
            });
            self.store.save_chain_cursor(&self.config.chain, &recent).await?;
            outcome.blocks_processed += 1;
        }
        outcome.tip = recent.last().map(|b| b.number as u64);
        if let Some(tip) = outcome.tip {
            self.confirm(tip, &mut outcome).await?;
        }
        self.record(head, &outcome);
        Ok(outcome)
    }

    fn record(&self, head: u64, outcome: &PollOutcome) {
        let chain = self.config.chain.as_str();
        let m = &self.metrics;
        m.head_block.with_label_values(&[chain]).set(head as i64);
        if let Some(tip) = outcome.tip {
            m.processed_block.with_label_values(&[chain]).set(tip as i64);
            m.lag_blocks
                .with_label_values(&[chain])
                .set(head.saturating_sub(tip) as i64);
        }
        if outcome.reorg_to.is_some() {
            m.reorgs.with_label_values(&[chain]).inc();
        }
        m.deposit_event(chain, "recorded", outcome.deposits_recorded);
        m.deposit_event(chain, "unmatched", outcome.unmatched);
        m.deposit_event(chain, "credited", outcome.credited);
        m.deposit_event(
            chain,
            "failed",
            outcome.orphaned - outcome.reversed.min(outcome.orphaned),
        );
        m.deposit_event(chain, "reversed", outcome.reversed);
    }

    /// The checkpoint's recent blocks; on a first start, the block before the start block (so
    /// that a re-org of the very first blocks still has an ancestor to roll back to).
    async fn load_recent(&self, head: u64) -> Result<Vec<BlockRef>, ChainError> {
        if let Some(cursor) = self.store.chain_cursor(&self.config.chain).await? {
            return Ok(cursor.recent);
        }
        let start = self.config.start_block.unwrap_or(head);
        let Some(before) = start.checked_sub(1) else {
            return Ok(Vec::new());
        };
        let hash = self.rpc.block_hash(before).await?;
        let hash = hash.ok_or_else(|| ChainError::Config(format!("the node has no block {before}")))?;
        Ok(vec![BlockRef {
            number: before as i64,
            hash,
        }])
    }

    fn chain_assets(&self) -> Vec<AssetConfig> {
        let catalog = self.catalog.current();
        catalog
            .iter()
            .filter(|a| a.chain == self.config.chain)
            .cloned()
            .collect()
    }

    /// Records every transfer in `block` to a known deposit address, decoded by the rules in
    /// [`crate::deposits`] (the ones webhooks are checked with).
    async fn scan_block(&self, block: &Block, outcome: &mut PollOutcome) -> Result<(), ChainError> {
        let assets = self.chain_assets();
        let mut candidates = deposits::native_transfers(&assets, block.transactions.txns());
        let contracts: Vec<Address> = deposits::token_contracts(&assets).into_keys().collect();
        let logs = self.rpc.transfer_logs(block.header.number, &contracts).await?;
        candidates.extend(deposits::token_transfers(&assets, &logs));
        let addresses: Vec<String> = candidates.iter().map(|c| format!("{:#x}", c.to)).collect();
        let known = self.store.deposit_addresses_among(&addresses).await?;
        for transfer in candidates {
            let address = format!("{:#x}", transfer.to);
            if !known.iter().any(|k| k.address == address) {
                continue;
            }
            if transfer.log_index.is_none() && !self.succeeded(transfer.tx_hash).await? {
                continue;
            }
            let deposit = ObservedDeposit {
                chain: self.config.chain.clone(),
                tx_hash: hex_of(&transfer.tx_hash),
                log_index: transfer.log_index,
                address,
                asset: transfer.asset,
                amount: to_amount(transfer.value),
                block_number: block.header.number,
                block_hash: hex_of(&block.header.hash),
                source: "listener".into(),
            };
            self.observe(&deposit, outcome).await?;
        }
        Ok(())
    }

    async fn succeeded(&self, tx_hash: B256) -> Result<bool, ChainError> {
        Ok(deposits::native_counts(self.rpc.receipt(tx_hash).await?.as_ref()))
    }

    async fn observe(&self, deposit: &ObservedDeposit, outcome: &mut PollOutcome) -> Result<(), ChainError> {
        let catalog = self.catalog.current();
        match self
            .store
            .observe_deposit(deposit, catalog.get(&deposit.asset))
            .await?
        {
            Observation::Recorded => outcome.deposits_recorded += 1,
            Observation::Unmatched => outcome.unmatched += 1,
            Observation::AlreadyKnown => {}
        }
        Ok(())
    }

    /// Rolls `recent` back to the newest block the node still has, then re-examines the
    /// deposits above it. Returns the common ancestor's number.
    async fn unwind(&self, recent: &mut Vec<BlockRef>, outcome: &mut PollOutcome) -> Result<u64, ChainError> {
        while let Some(candidate) = recent.last() {
            let canonical = self.rpc.block_hash(candidate.number as u64).await?;
            if canonical.as_deref() == Some(candidate.hash.as_str()) {
                break;
            }
            recent.pop();
        }
        let Some(ancestor) = recent.last().cloned() else {
            return Err(ChainError::ReorgTooDeep(coffer_store::chain::CURSOR_HISTORY_MAX));
        };
        // The deposits above the ancestor are re-examined BEFORE the rolled-back cursor is saved:
        // a poll that fails (or a process killed) in between finds the same re-org again next
        // time. Saved first, the next poll would find its cursor canonical and never look at a
        // credited deposit the re-org took away again (found by the fault harness).
        for status in [DepositStatus::Confirming, DepositStatus::Credited] {
            let above = self
                .store
                .chain_deposits_in(
                    &self.config.chain,
                    status,
                    ancestor.number + 1,
                    self.config.confirming_page,
                )
                .await?;
            for deposit in above {
                if !self.still_on_chain(&deposit).await? {
                    self.store.orphan_deposit(&deposit).await?;
                    outcome.orphaned += 1;
                    if status == DepositStatus::Credited {
                        outcome.reversed += 1;
                    }
                }
            }
        }
        if outcome.orphaned > 0 {
            coffer_telemetry::faults::point("listener.mid_unwind");
        }
        self.store.save_chain_cursor(&self.config.chain, recent).await?;
        tracing::warn!(chain = %self.config.chain, ancestor = ancestor.number, "re-org: cursor rolled back");
        Ok(ancestor.number as u64)
    }

    /// Whether the deposit's transaction is (still, or again) in the canonical chain; if it moved
    /// to another block, the record follows it.
    async fn still_on_chain(&self, deposit: &ChainDepositDoc) -> Result<bool, ChainError> {
        Ok(self.placement(deposit).await? != Placement::Gone)
    }

    async fn placement(&self, deposit: &ChainDepositDoc) -> Result<Placement, ChainError> {
        let canonical = self.rpc.block_hash(deposit.block_number as u64).await?;
        if canonical.as_deref() == Some(deposit.block_hash.as_str()) {
            return Ok(Placement::Same);
        }
        let hash: B256 = deposit
            .tx_hash
            .parse()
            .map_err(|_| ChainError::Rpc(format!("stored hash of {} is not a hash", deposit.key)))?;
        match self.rpc.receipt(hash).await? {
            Some(receipt) if receipt.status() => {
                let (Some(number), Some(block_hash)) = (receipt.block_number, receipt.block_hash) else {
                    return Ok(Placement::Gone);
                };
                let moved = BlockRef {
                    number: number as i64,
                    hash: hex_of(&block_hash),
                };
                self.store.move_deposit_block(&deposit.key, &moved).await?;
                Ok(Placement::Moved)
            }
            _ => Ok(Placement::Gone),
        }
    }

    /// Counts confirmations up to `tip` and credits what reached the asset's live threshold.
    async fn confirm(&self, tip: u64, outcome: &mut PollOutcome) -> Result<(), ChainError> {
        let confirming = self
            .store
            .chain_deposits_in(
                &self.config.chain,
                DepositStatus::Confirming,
                0,
                self.config.confirming_page,
            )
            .await?;
        let catalog = self.catalog.current();
        // Still waiting after this poll: the page, less what it credits or finds gone.
        let mut waiting = confirming.len() as i64;
        for mut deposit in confirming {
            let block = deposit.block_number as u64;
            if block > tip {
                continue;
            }
            let confirmations = tip - block + 1;
            if deposit.confirmations != confirmations as i64 {
                self.store
                    .set_deposit_confirmations(&deposit.key, confirmations)
                    .await?;
                deposit.confirmations = confirmations as i64;
            }
            let Some(asset) = catalog.get(&deposit.asset) else {
                continue;
            };
            if confirmations < u64::from(asset.confirmations_required.max(1)) {
                continue;
            }
            // A webhook-reported deposit never went through the cursor's parent-hash check.
            match self.placement(&deposit).await? {
                Placement::Same => {}
                Placement::Moved => continue, // counted again from its new block next poll
                Placement::Gone => {
                    self.store.orphan_deposit(&deposit).await?;
                    outcome.orphaned += 1;
                    waiting -= 1;
                    continue;
                }
            }
            self.store.credit_deposit(&deposit).await?;
            outcome.credited += 1;
            waiting -= 1;
            let threshold_block = block + u64::from(asset.confirmations_required.max(1)) - 1;
            self.observe_credit_latency(threshold_block).await;
        }
        self.metrics
            .deposits_confirming
            .with_label_values(&[&self.config.chain])
            .set(waiting);
        Ok(())
    }

    /// Observes `coffer_chain_deposit_credit_latency_seconds` for a deposit just credited: from
    /// the timestamp of `threshold_block` (where the deposit reached its required confirmations;
    /// the earliest it could be credited) to now. A node that cannot say costs the sample, never
    /// the poll: the credit is already committed.
    async fn observe_credit_latency(&self, threshold_block: u64) {
        match self.rpc.block_timestamp(threshold_block).await {
            Ok(Some(time)) => self.metrics.deposit_credited(&self.config.chain, time),
            Ok(None) => {
                tracing::warn!(chain = %self.config.chain, threshold_block, "no timestamp for the threshold block: credit latency not observed")
            }
            Err(error) => {
                tracing::warn!(chain = %self.config.chain, threshold_block, %error, "credit latency not observed")
            }
        }
    }
}
