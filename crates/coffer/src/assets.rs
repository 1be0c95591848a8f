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
    tokio::spawn(async move {
        let mut last = std::fs::read_to_string(&path).unwrap_or_default();
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
