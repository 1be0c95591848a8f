//! Reserves read from the chain (issue 17 item 1): the reconciler's [`CustodySource`] for one
//! chain. For each asset it reads what the platform holds — every hot wallet that signed on the
//! chain or was swept to (plus any configured) and every deposit address of the asset (of the
//! chain, for its coin) — at a block deep enough
//! that the ledger has caught up with it: the listener's checkpoint, less the asset's
//! confirmations. What is still in flight at that block is corrected for: deposits mined but
//! still confirming (on chain, not yet custody) are subtracted, withdrawals mined but not yet
//! settled (custody, no longer on chain) are added back, and so is the coin gas of sweeps mined
//! but not yet booked. The result is what the custody account
//! must show (docs/chain.md, "Reserves").

use std::sync::Arc;

use alloy::primitives::{Address, U256};
use coffer_domain::sweep::{gas_cost, SweepState};
use coffer_domain::{Amount, AssetConfig, LiveCatalog};
use coffer_store::custody::ADDRESS_PAGE_MAX;
use coffer_store::reconcile::{ChainReading, CustodySource};
use coffer_store::sweeps::SWEEP_PAGE_MAX;
use coffer_store::Store;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};

use crate::rpc::Rpc;
use crate::ChainError;

/// Balance reads in flight at once.
const READS_IN_FLIGHT_MAX: usize = 8;
/// The most addresses one asset's reading covers; beyond it the reading is an error (sweeping,
/// issue 17 item 2, keeps deposit addresses few in practice).
pub const ADDRESSES_MAX: usize = 100_000;

/// Reads one chain's reserves through its node.
pub struct ChainCustody {
    pub chain: String,
    pub rpc: Rpc,
    pub store: Store,
    pub catalog: LiveCatalog,
    /// Hot wallets to include even if they never signed (lower-case `0x…`).
    pub hot_wallets: Vec<String>,
}

fn address(text: &str) -> Result<Address, ChainError> {
    text.parse()
        .map_err(|_| ChainError::Config(format!("{text} is not an address")))
}

fn amount_of(value: U256) -> Amount {
    Amount::from_atomic(value)
}

impl ChainCustody {
    pub fn new(
        chain: &str,
        rpc: Rpc,
        store: Store,
        catalog: LiveCatalog,
        hot_wallets: Vec<String>,
    ) -> Arc<Self> {
        Arc::new(ChainCustody {
            chain: chain.to_string(),
            rpc,
            store,
            catalog,
            hot_wallets: hot_wallets.iter().map(|a| a.to_lowercase()).collect(),
        })
    }

    /// The block whose holdings the ledger must already reflect for `asset`.
    async fn reading_block(&self, asset: &AssetConfig) -> Result<u64, ChainError> {
        let head = self.rpc.head().await?;
        let scanned = match self.store.chain_cursor(&self.chain).await? {
            Some(cursor) => (cursor.block_number.max(0) as u64).min(head),
            None => head,
        };
        let depth = u64::from(asset.confirmations_required.max(1)) - 1;
        Ok(scanned.saturating_sub(depth))
    }

    /// Every address whose holdings count for `asset`: hot wallets (configured, signing, or
    /// swept to), then deposit addresses —
    /// for the chain's coin every deposit address of the chain, since a token's deposit address
    /// keeps what is left of the coin its sweeps were funded with.
    async fn holders(&self, asset: &AssetConfig) -> Result<Vec<Address>, ChainError> {
        let mut texts = self.hot_wallets.clone();
        texts.extend(self.store.signing_wallets(&self.chain).await?);
        texts.extend(self.store.sweep_targets(&self.chain).await?);
        let only = asset.contract.is_some().then_some(asset.symbol.as_str());
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .deposit_address_docs_page(&self.chain, only, after.as_deref(), ADDRESS_PAGE_MAX)
                .await?;
            let Some(last) = page.last().map(|d| d.address.clone()) else {
                break;
            };
            texts.extend(page.into_iter().map(|d| d.address));
            if texts.len() > ADDRESSES_MAX {
                return Err(ChainError::Config(format!(
                    "{} holds funds at more than {ADDRESSES_MAX} addresses",
                    asset.symbol
                )));
            }
            after = Some(last);
        }
        texts.sort();
        texts.dedup();
        texts.iter().map(|t| address(t)).collect()
    }

    /// What `holders` hold of `asset` at `block`.
    async fn holdings(
        &self,
        asset: &AssetConfig,
        holders: &[Address],
        block: u64,
    ) -> Result<Amount, ChainError> {
        let token = asset.contract.as_deref().map(address).transpose()?;
        let reads = futures::stream::iter(holders.iter().copied())
            .map(|holder| async move {
                match token {
                    Some(token) => self.rpc.token_balance_at(token, holder, block).await,
                    None => self.rpc.balance_at(holder, block).await,
                }
            })
            .buffer_unordered(READS_IN_FLIGHT_MAX);
        let total = reads
            .try_fold(U256::ZERO, |total, value| async move {
                total
                    .checked_add(value)
                    .ok_or_else(|| ChainError::Rpc("holdings overflow".into()))
            })
            .await?;
        Ok(amount_of(total))
    }

    /// The coin gas of open sweeps (and their gas fundings) mined at or before `block`: gone
    /// from the chain, booked only once they have their confirmations.
    async fn sweep_gas_in_flight(&self, block: u64) -> Result<Amount, ChainError> {
        let open = self.store.open_sweeps(&self.chain, SWEEP_PAGE_MAX).await?;
        if open.len() >= SWEEP_PAGE_MAX as usize {
            return Err(ChainError::Config(format!(
                "{} has {SWEEP_PAGE_MAX} or more open sweeps: their gas in flight cannot be read whole",
                self.chain
            )));
        }
        let mut total = Amount::ZERO;
        for sweep in &open {
            // Every version spends one nonce: at most one of them has a receipt.
            let versions = match sweep.state() {
                Some(SweepState::Funding) => sweep.funding.as_ref().map(|f| f.versions()).unwrap_or_default(),
                Some(SweepState::Signed | SweepState::Broadcasted) => sweep.versions(),
                _ => Vec::new(),
            };
            for version in &versions {
                let hash = version
                    .tx_hash
                    .parse()
                    .map_err(|_| ChainError::Rpc(format!("sweep {} has a bad hash", sweep.id)))?;
                let Some(receipt) = self.rpc.receipt(hash).await? else {
                    continue;
                };
                if receipt.block_number.is_some_and(|mined| mined <= block) {
                    let gas = gas_cost(receipt.gas_used, receipt.effective_gas_price)
                        .ok_or_else(|| ChainError::Rpc("sweep gas overflows".into()))?;
                    total = total
                        .checked_add(gas)
                        .ok_or_else(|| ChainError::Rpc("sweep gas overflows".into()))?;
                }
            }
        }
        Ok(total)
    }

    async fn read(&self, asset: &AssetConfig) -> Result<ChainReading, ChainError> {
        let block = self.reading_block(asset).await?;
        let holders = self.holders(asset).await?;
        let on_chain = self.holdings(asset, &holders, block).await?;
        let confirming = self
            .store
            .confirming_deposits_up_to(&self.chain, &asset.symbol, block)
            .await?;
        let gas_in_asset = asset.contract.is_none();
        let unsettled = self
            .store
            .unsettled_outflow_up_to(&self.chain, &asset.symbol, block, gas_in_asset)
            .await?;
        let unbooked_gas = match asset.contract {
            None => self.sweep_gas_in_flight(block).await?,
            Some(_) => Amount::ZERO,
        };
        let custody = on_chain
            .checked_add(unsettled)
            .and_then(|a| a.checked_add(unbooked_gas))
            .and_then(|a| a.checked_sub(confirming))
            .ok_or_else(|| {
                ChainError::Rpc(format!(
                    "{}: confirming deposits exceed the holdings",
                    asset.symbol
                ))
            })?;
        Ok(ChainReading {
            custody,
            on_chain,
            block_number: Some(block),
        })
    }
}

impl CustodySource for ChainCustody {
    fn on_chain_balance<'a>(
        &'a self,
        symbol: &'a str,
    ) -> BoxFuture<'a, Result<Option<ChainReading>, String>> {
        Box::pin(async move {
            let catalog = self.catalog.current();
            let Some(asset) = catalog
                .iter()
                .find(|a| a.symbol == symbol && a.chain == self.chain)
            else {
                return Ok(None);
            };
            self.read(asset).await.map(Some).map_err(|e| e.to_string())
        })
    }
}

/// Several chains' sources as one: an asset is read by the source of its chain.
pub struct Chains(pub Vec<Arc<ChainCustody>>);

impl CustodySource for Chains {
    fn on_chain_balance<'a>(
        &'a self,
        symbol: &'a str,
    ) -> BoxFuture<'a, Result<Option<ChainReading>, String>> {
        Box::pin(async move {
            for source in &self.0 {
                if let Some(reading) = source.on_chain_balance(symbol).await? {
                    return Ok(Some(reading));
                }
            }
            Ok(None)
        })
    }
}
