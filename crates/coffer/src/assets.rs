//! The asset catalog of a role: read from its file at start, then kept current (K4). On
//! Kubernetes the operator names the role's ConfigMap (`COFFER_ASSETS_CONFIGMAP`) and the role
//! follows it through the API server; elsewhere (`coffer dev`, config/assets.dev.json) the file is
//! re-read when it changes. Either way a refused version leaves the last good catalog in force
//! ([`coffer_operator::catalog`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use coffer_domain::{AssetCatalog, LiveCatalog};
use coffer_operator::catalog::{spawn_follower, CatalogFeed, CatalogMetrics};

use crate::cli::AssetsArgs;

/// How often the file is looked at when no ConfigMap is followed.
const FILE_POLL: Duration = Duration::from_secs(2);

/// The catalog from `args.assets_file`, kept current in the background; its metrics go to
/// `registry`.
pub async fn live_catalog(args: &AssetsArgs, registry: &prometheus::Registry) -> anyhow::Result<LiveCatalog> {
    let (live, text) = load(&args.assets_file)?;
    let feed = CatalogFeed::new(live.clone(), text, CatalogMetrics::new(registry)?);
    match &args.assets_config_map {
        Some(config_map) => spawn_follower(config_map.clone(), feed).await?,
        None => spawn_reloader(args.assets_file.clone(), feed, FILE_POLL),
    }
    Ok(live)
}

fn load(path: &Path) -> anyhow::Result<(LiveCatalog, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading assets file {}", path.display()))?;
    let catalog = AssetCatalog::from_json(&text).with_context(|| format!("validating {}", path.display()))?;
    Ok((LiveCatalog::new(catalog), text))
}

/// Polls the file and offers each new version to `feed`.
fn spawn_reloader(path: PathBuf, mut feed: CatalogFeed, every: Duration) {
    let source = format!("file {}", path.display());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Ok(text) = tokio::fs::read_to_string(&path).await {
                feed.offer(&text, &source);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = include_str!("../../../config/assets.dev.json");

    async fn eventually(live: &LiveCatalog, check: impl Fn(&AssetCatalog) -> bool) -> bool {
        for _ in 0..100 {
            if check(&live.current()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_changed_file_applies_without_restart_and_a_bad_one_is_refused() {
        let path = std::env::temp_dir().join(format!("coffer-assets-{}.json", std::process::id()));
        std::fs::write(&path, DEV).unwrap();
        let (live, text) = load(&path).unwrap();
        assert_eq!(live.current().get("ETH").unwrap().confirmations_required, 3);
        let registry = prometheus::Registry::new();
        let feed = CatalogFeed::new(live.clone(), text, CatalogMetrics::new(&registry).unwrap());
        spawn_reloader(path.clone(), feed, Duration::from_millis(20));

        std::fs::write(
            &path,
            DEV.replace("\"confirmations_required\": 3", "\"confirmations_required\": 12"),
        )
        .unwrap();
        assert!(eventually(&live, |c| c.get("ETH").unwrap().confirmations_required == 12).await);

        // An invalid version (a limit with too many decimals) is refused; the last good one stays.
        std::fs::write(
            &path,
            DEV.replace("\"withdrawal_min\": \"1\"", "\"withdrawal_min\": \"1.0000001\""),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(live.current().get("ETH").unwrap().confirmations_required, 12);
        assert!(live.current().get("USDT").is_some());
        let refused = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "coffer_asset_catalog_refused")
            .unwrap();
        assert_eq!(refused.get_metric()[0].get_gauge().get_value(), 1.0);
        std::fs::remove_file(&path).unwrap();
    }
}
