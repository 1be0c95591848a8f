//! The asset catalog from a file, re-read when it changes (K4: the operator's ConfigMap is
//! updated in place by the kubelet; in `dev` the file is config/assets.dev.json).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use coffer_domain::{AssetCatalog, LiveCatalog};

pub fn load(path: &Path) -> anyhow::Result<LiveCatalog> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading assets file {}", path.display()))?;
    let catalog = AssetCatalog::from_json(&text).with_context(|| format!("validating {}", path.display()))?;
    Ok(LiveCatalog::new(catalog))
}

/// Polls the file; a valid new version replaces the catalog, an invalid one is logged and the
/// last good catalog stays in force.
pub fn spawn_reloader(path: PathBuf, live: LiveCatalog, every: Duration) {
    // Compare against what is in force now, read before the task starts: a change written
    // between `load` and the first poll must not be taken for the baseline.
    let mut last = std::fs::read_to_string(&path).unwrap_or_default();
    if AssetCatalog::from_json(&last).ok().as_ref() != Some(&*live.current()) {
        last.clear();
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Ok(text) = tokio::fs::read_to_string(&path).await else {
                continue;
            };
            if text == last {
                continue;
            }
            match AssetCatalog::from_json(&text) {
                Ok(catalog) => {
                    live.replace(catalog);
                    tracing::info!(file = %path.display(), "asset catalog reloaded");
                }
                Err(error) => {
                    tracing::error!(file = %path.display(), %error, "asset catalog refused; keeping the last good one")
                }
            }
            last = text;
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
        let live = load(&path).unwrap();
        assert_eq!(live.current().get("ETH").unwrap().confirmations_required, 3);
        spawn_reloader(path.clone(), live.clone(), Duration::from_millis(20));

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
        std::fs::remove_file(&path).unwrap();
    }
}
