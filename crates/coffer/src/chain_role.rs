//! The `chain-listener` role: follows one chain, serves /healthz, /readyz and /metrics; with a
//! signer key file it also runs the chain's withdrawal broadcaster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use coffer_chain::broadcaster::{Broadcaster, BroadcasterConfig};
use coffer_chain::listener::{Listener, ListenerConfig};
use coffer_chain::metrics::ChainMetrics;
use coffer_chain::rpc::Rpc;
use coffer_chain::signer::{LocalSigner, Signer};
use coffer_chain::sweep_signer::LocalDepositSigner;
use coffer_chain::sweeper::{SweepMetrics, Sweeper, SweeperConfig};
use coffer_domain::replacement::ReplacementPolicy;
use coffer_domain::sweep::SweepPolicy;
use coffer_domain::LiveCatalog;
use coffer_store::Store;

use crate::cli::ChainListenerArgs;

/// The listener's settings from its arguments.
/// The listener's settings from its arguments (their ranges are checked when they are parsed).
pub fn listener_config(
    chain: &str,
    poll_interval_ms: u64,
    start_block: Option<u64>,
    max_blocks: u64,
) -> ListenerConfig {
    let mut config = ListenerConfig::new(chain);
    config.poll_interval = Duration::from_millis(poll_interval_ms);
    config.start_block = start_block;
    config.max_blocks_per_poll = max_blocks;
    config
}

pub async fn run(args: ChainListenerArgs, roots: &coffer_tls::TlsRoots) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    coffer_store::metrics::register_build_info(&registry)?;
    let catalog = crate::assets::live_catalog(&args.assets, &registry).await?;
    let store = crate::connect(&args.db, &registry).await?;
    let rpc = Rpc::connect(&args.eth_rpc_url, roots)?;
    let config = listener_config(
        &args.chain,
        args.poll_interval_ms,
        args.start_block,
        args.max_blocks_per_poll,
    );
    let chain_metrics = ChainMetrics::new(&registry)?;
    let listener = Listener::new(config, rpc.clone(), store.clone(), catalog.clone())
        .with_metrics(chain_metrics.clone());
    if let Some(path) = &args.signer_key_file {
        let settings = BroadcastSettings {
            poll_interval_ms: args.poll_interval_ms,
            replacement: args.replacement.policy(),
        };
        let hot = hot_signer(path)?;
        let broadcaster =
            broadcaster(&args.chain, &hot, &rpc, &store, &catalog, settings).with_metrics(chain_metrics);
        let hot_wallet = broadcaster.hot_wallet();
        tracing::info!(chain = %args.chain, hot_wallet = %hot_wallet, "broadcasting withdrawals");
        tokio::spawn(async move { broadcaster.run(std::future::pending()).await });
        if let Some(sweeper) = sweeper(&args, hot, &rpc, &store, &catalog, &registry)? {
            tracing::info!(chain = %args.chain, hot_wallet = %hot_wallet, "sweeping deposit addresses");
            tokio::spawn(async move { sweeper.run(std::future::pending()).await });
        }
    } else if args.sweep.deposit_xprv_file.is_some() {
        anyhow::bail!("--deposit-xprv-file needs --signer-key-file: sweeps go to its hot wallet");
    }
    let node = rpc.clone();
    let health = coffer_api::store_health(&store)
        .ping("node", move || {
            let node = node.clone();
            async move { node.head().await.map(|_| ()).map_err(|e| e.to_string()) }
        })
        .start();
    let server = crate::ops_server::spawn(&args.listen, health, registry, std::future::pending()).await?;
    tracing::info!(chain = %args.chain, "following the chain");
    listener.run(crate::shutdown_signal()).await;
    server.abort();
    Ok(())
}

/// The sweeper of the chain's coin and tokens when `--deposit-xprv-file` is given: the xprv must
/// belong to `--deposit-xpub`; the policy of the flags applies to every asset of the chain
/// (`--sweep-min-amount` to the coin, `--sweep-token-min-amount` to each token, in its units).
/// It shares the broadcaster's `hot` signer: token gas funding takes the hot wallet's nonces
/// from the same record as withdrawals.
fn sweeper(
    args: &ChainListenerArgs,
    hot: Arc<dyn Signer>,
    rpc: &Rpc,
    store: &Store,
    catalog: &LiveCatalog,
    registry: &prometheus::Registry,
) -> anyhow::Result<Option<Sweeper>> {
    let sweep = &args.sweep;
    let Some(path) = &sweep.deposit_xprv_file else {
        return Ok(None);
    };
    let xpub = sweep
        .deposit_xpub
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--deposit-xprv-file needs --deposit-xpub (COFFER_DEPOSIT_XPUB)"))?;
    let signer = LocalDepositSigner::from_file(path, xpub).map_err(|e| anyhow::anyhow!("{e}"))?;
    let keys = coffer_chain::hd::DepositKeys::from_xpub(xpub).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !coffer_chain::sweep_signer::agrees_with(&signer, &keys, 3).map_err(|e| anyhow::anyhow!("{e}"))? {
        anyhow::bail!("the deposit xprv's addresses differ from the xpub's");
    }
    let mut policies = BTreeMap::new();
    for asset in catalog.current().iter().filter(|a| a.chain == args.chain) {
        let (flag, text) = match asset.contract {
            None => ("--sweep-min-amount", &sweep.sweep_min_amount),
            Some(_) => ("--sweep-token-min-amount", &sweep.sweep_token_min_amount),
        };
        let min_amount = coffer_domain::Amount::parse_decimal(text, asset.decimals)
            .map_err(|e| anyhow::anyhow!("{flag} for {}: {e}", asset.symbol))?;
        policies.insert(
            asset.symbol.clone(),
            SweepPolicy {
                min_amount,
                batch_max: sweep.sweep_batch_max as usize,
                gas_price_ceiling_wei: u128::from(sweep.sweep_gas_price_ceiling_gwei) * 1_000_000_000,
            },
        );
    }
    let config = SweeperConfig {
        chain: args.chain.clone(),
        poll_interval: Duration::from_millis(args.poll_interval_ms.max(1000)),
        max_priority_fee_per_gas: 1_000_000_000,
        policies,
        // The broadcaster's policy: a stuck funding holds up the withdrawals' nonces too.
        replacement: args.replacement.policy(),
    };
    let metrics = SweepMetrics::new(registry)?;
    Ok(Some(
        Sweeper::new(
            config,
            rpc.clone(),
            store.clone(),
            catalog.clone(),
            Arc::new(signer),
            hot,
        )
        .with_metrics(metrics),
    ))
}

/// The broadcaster's settings from the role's arguments.
#[derive(Clone, Copy)]
struct BroadcastSettings {
    poll_interval_ms: u64,
    replacement: ReplacementPolicy,
}

/// The hot wallet's signer: the local key in `key_file`.
fn hot_signer(key_file: &std::path::Path) -> anyhow::Result<Arc<dyn Signer>> {
    let signer = LocalSigner::from_file(key_file).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Arc::new(signer))
}

/// The withdrawal broadcaster of `chain`, signing with `hot`.
fn broadcaster(
    chain: &str,
    hot: &Arc<dyn Signer>,
    rpc: &Rpc,
    store: &Store,
    catalog: &LiveCatalog,
    settings: BroadcastSettings,
) -> Broadcaster {
    let mut config = BroadcasterConfig::new(chain);
    config.poll_interval = Duration::from_millis(settings.poll_interval_ms);
    config.replacement = settings.replacement;
    Broadcaster::new(config, rpc.clone(), store.clone(), catalog.clone(), hot.clone())
}

/// In `coffer dev`: one listener per chain of the catalog when `ETH_RPC_URL` answers; otherwise
/// a warning, and the API runs alone.
pub async fn spawn_in_dev(
    url: Option<&str>,
    signer_key_file: Option<&std::path::Path>,
    replacement: ReplacementPolicy,
    roots: &coffer_tls::TlsRoots,
    store: &Store,
    catalog: &LiveCatalog,
    registry: &prometheus::Registry,
) -> anyhow::Result<()> {
    let Some(url) = url else {
        tracing::warn!("ETH_RPC_URL is not set: dev runs without the chain listener");
        return Ok(());
    };
    let rpc = match Rpc::connect(url, roots) {
        Ok(rpc) if rpc.head().await.is_ok() => rpc,
        _ => {
            tracing::warn!("ETH_RPC_URL does not answer: dev runs without the chain listener");
            return Ok(());
        }
    };
    let mut chains: Vec<String> = catalog.current().iter().map(|a| a.chain.clone()).collect();
    chains.sort();
    chains.dedup();
    let metrics = ChainMetrics::new(registry)?;
    for chain in chains {
        let listener = Listener::new(
            listener_config(&chain, 1000, None, 50),
            rpc.clone(),
            store.clone(),
            catalog.clone(),
        )
        .with_metrics(metrics.clone());
        tracing::info!(%chain, "dev: following the chain");
        tokio::spawn(async move { listener.run(std::future::pending()).await });
        if let Some(path) = signer_key_file {
            let settings = BroadcastSettings {
                poll_interval_ms: 1000,
                replacement,
            };
            let broadcaster = broadcaster(&chain, &hot_signer(path)?, &rpc, store, catalog, settings)
                .with_metrics(metrics.clone());
            tracing::info!(%chain, hot_wallet = %broadcaster.hot_wallet(), "dev: broadcasting withdrawals");
            tokio::spawn(async move { broadcaster.run(std::future::pending()).await });
        }
    }
    Ok(())
}
