//! The `reconciler` role (runs on an interval, serves health and metrics) and `coffer audit verify`.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use coffer_chain::custody::{ChainCustody, Chains};
use coffer_store::reconcile::{CustodySource, NoChainConfigured, ReconcileMetrics, Reconciler};
use coffer_store::Store;
use tracing::Instrument;

use crate::cli::{AuditExportArgs, AuditVerifyArgs, ReconcilerArgs};

/// Runs a reconciliation now and then every interval until `shutdown`; runs never overlap.
pub async fn run(
    args: ReconcilerArgs,
    roots: &coffer_tls::TlsRoots,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = args.limits.config()?;
    // Every setting is checked before the role connects: a weak key stops it at once.
    let liabilities = liability_schedule(&args)?;
    let registry = prometheus::Registry::new();
    coffer_store::metrics::register_build_info(&registry)?;
    let store = crate::connect(&args.db, &registry).await?;
    let reconciler = Reconciler {
        config,
        custody: custody_source(&args.reserves, roots, &store, &registry).await?,
        metrics: ReconcileMetrics::new(&registry)?,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut server_stopped = stopped.clone();
    let health = coffer_api::store_health(&store).start();
    let server = crate::ops_server::spawn(&args.listen, health, registry, async move {
        let _ = server_stopped.changed().await;
    })
    .await?;
    tracing::info!(
        interval_seconds = args.interval_seconds,
        liability_publish_interval_seconds = args.liability_publish_interval_seconds,
        "reconciler started"
    );

    let mut interval = tokio::time::interval(Duration::from_secs(args.interval_seconds));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Without a schedule the publishing branch is disabled (its interval is never polled).
    let publish_every = liabilities
        .as_ref()
        .map_or(Duration::from_secs(3600), |(_, every)| *every);
    let mut publish_interval = tokio::time::interval(publish_every);
    publish_interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let export = &args.audit_export;
    let mut export_interval =
        tokio::time::interval(Duration::from_secs(export.audit_export_interval_seconds));
    export_interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if export.audit_heads_path.is_none() {
        tracing::warn!(
            "COFFER_AUDIT_HEADS_PATH is unset: audit heads are not exported, so a cut tail cannot be found"
        );
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = interval.tick() => run_once(&reconciler, &store).await,
            _ = export_interval.tick(), if export.audit_heads_path.is_some() => export_heads(&store, export).await,
            _ = publish_interval.tick(), if liabilities.is_some() => {
                if let Some((key, _)) = &liabilities {
                    publish_all(&store, key).await;
                }
            }
        }
    }
    let _ = stop.send(true);
    server.await.context("the health server task")??;
    tracing::info!("stopped");
    Ok(())
}

/// The custody check's chain side: each configured chain's node, read at a block the ledger has
/// caught up with; without RPC URLs the check is skipped.
async fn custody_source(
    args: &crate::cli::ReservesArgs,
    roots: &coffer_tls::TlsRoots,
    store: &Store,
    registry: &prometheus::Registry,
) -> anyhow::Result<Arc<dyn CustodySource>> {
    let rpcs = args.rpcs(roots)?;
    if rpcs.is_empty() {
        return Ok(Arc::new(NoChainConfigured));
    }
    let Some(assets_file) = &args.assets_file else {
        anyhow::bail!("COFFER_CHAIN_RPC_URLS needs COFFER_ASSETS_FILE (the asset catalog)");
    };
    let assets = crate::cli::AssetsArgs {
        assets_file: assets_file.clone(),
        assets_config_map: None,
    };
    let catalog = crate::assets::live_catalog(&assets, registry).await?;
    let mut sources = Vec::new();
    for (chain, rpc) in rpcs {
        let hot_wallets = args.hot_wallets(&chain)?;
        tracing::info!(%chain, hot_wallets = hot_wallets.len(), "custody checked against the chain");
        sources.push(ChainCustody::new(
            &chain,
            rpc,
            store.clone(),
            catalog.clone(),
            hot_wallets,
        ));
    }
    Ok(Arc::new(Chains(sources)))
}

/// The key and interval of scheduled liabilities statements; an interval without a key is a
/// configuration error, found at start.
fn liability_schedule(
    args: &ReconcilerArgs,
) -> anyhow::Result<Option<(coffer_api::liabilities::LiabilityKey, Duration)>> {
    let key = args.liabilities.key()?;
    match (args.liability_publish_interval_seconds, key) {
        (None, _) => Ok(None),
        (Some(_), None) => {
            anyhow::bail!("COFFER_LIABILITY_PUBLISH_INTERVAL_SECONDS needs COFFER_LIABILITY_SIGNING_KEY")
        }
        (Some(seconds), Some(key)) => Ok(Some((key, Duration::from_secs(seconds)))),
    }
}

/// Publishes a statement of every asset that has user wallets; a failure is logged and the
/// next tick tries again.
async fn publish_all(store: &Store, key: &coffer_api::liabilities::LiabilityKey) {
    let assets = match store.user_wallet_assets().await {
        Ok(assets) => assets,
        Err(error) => {
            tracing::error!(error = %error, "liabilities: listing assets failed");
            return;
        }
    };
    for (asset, decimals) in assets {
        match coffer_api::liabilities::publish(store, key, &asset, decimals, "interval", None).await {
            Ok(statement) => tracing::info!(
                asset = %asset, statement_id = %statement.id, leaf_count = statement.leaf_count,
                "liabilities statement published"
            ),
            Err(error) => tracing::error!(asset = %asset, error = %error, "liabilities statement failed"),
        }
    }
}

/// One run, traced as one `reconcile` span with its database commands as children.
async fn run_once(reconciler: &Reconciler, store: &Store) {
    let span = tracing::info_span!("reconcile", otel.name = "reconcile", trigger = "interval");
    let result = reconciler
        .run(store, "interval", None)
        .instrument(span.clone())
        .await;
    let _entered = span.enter();
    match result {
        Ok(run) if run.mismatches == 0 => {
            tracing::info!(run_id = %run.id, duration_ms = run.duration_ms, "reconciliation: the books balance")
        }
        Ok(run) => {
            let failing: Vec<&str> = run
                .checks
                .iter()
                .filter(|c| c.mismatches > 0)
                .map(|c| c.check.as_str())
                .collect();
            tracing::warn!(run_id = %run.id, mismatches = run.mismatches, checks = ?failing, "reconciliation found mismatches")
        }
        // The next tick tries again; the last-run timestamp metric shows the gap.
        Err(error) => tracing::error!(error = %error, "reconciliation run failed"),
    }
}

/// Appends one MACed line of every shard's head to the export file (append-only, fsynced); a
/// failure is logged and the next tick tries again.
async fn export_heads(store: &Store, export: &AuditExportArgs) {
    let Some(path) = export.audit_heads_path.clone() else {
        return;
    };
    let line = match store.audit_heads_line().await {
        Ok(line) => line,
        Err(error) => return tracing::error!(error = %error, "audit heads: reading the heads failed"),
    };
    let written = tokio::task::spawn_blocking(move || append_line(&path, &line)).await;
    match written {
        Ok(Ok(())) => tracing::debug!("audit heads exported"),
        Ok(Err(error)) => tracing::error!(error = %error, "audit heads: writing the export failed"),
        Err(error) => tracing::error!(error = %error, "audit heads: the export task failed"),
    }
}

fn append_line(path: &std::path::Path, line: &coffer_store::audit_chain::HeadsLine) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).create(true).open(path)?;
    let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
    text.push('\n');
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// `coffer audit verify [--heads PATH]`: exit 0 when every shard is intact (and agrees with the
/// exported heads), 1 naming the shard, seq and kind of the first break.
pub async fn verify_audit(args: AuditVerifyArgs) -> anyhow::Result<ExitCode> {
    let store = crate::connect(&args.db, &prometheus::Registry::new()).await?;
    let exported = match &args.heads {
        None => None,
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            match store.parse_heads_export(&text) {
                Ok(exported) => Some(exported),
                Err(problem) => {
                    println!("AUDIT HEADS EXPORT REFUSED ({}): {problem}", path.display());
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    };
    let report = store.verify_audit(exported.as_ref()).await?;
    println!(
        "audit records checked: {} in {} shards; exported head lines: {}",
        report.records_checked,
        report.shards.len(),
        report.exported_lines
    );
    match &report.first_break {
        None => {
            for shard in report.shards.iter().filter(|s| s.head_seq > 0) {
                println!(
                    "shard {} intact; head seq {} mac {}",
                    shard.shard, shard.head_seq, shard.head_mac
                );
            }
            println!("audit chains intact");
            Ok(ExitCode::SUCCESS)
        }
        Some(_) => {
            for b in report.shards.iter().filter_map(|s| s.first_break.as_ref()) {
                let record = if b.id.is_empty() { "-" } else { b.id.as_str() };
                println!(
                    "AUDIT CHAIN BROKEN in shard {} at seq {} (record {record}): {} — {}",
                    b.shard,
                    b.seq,
                    b.kind.as_str(),
                    b.detail
                );
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
