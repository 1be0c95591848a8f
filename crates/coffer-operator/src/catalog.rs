//! The services' side of the asset catalog the operator publishes (K4).
//!
//! The operator writes the validated catalog into the `<platform>-assets` ConfigMap. A mounted
//! ConfigMap is refreshed by the kubelet only within its sync period (about a minute), so the
//! services follow the ConfigMap through the API server instead: [`follow_config_map`] lists and
//! watches that one object (RBAC `get`/`list`/`watch` on that name only) and a change reaches
//! them as soon as the API server sends the watch event. The mounted file stays the catalog a
//! pod starts with, so a service starts even while the API server is unreachable.
//!
//! Whatever the source, every version goes through a [`CatalogFeed`]: a valid one replaces the
//! catalog in force, one the services refuse is counted (`coffer_asset_catalog_updates_total
//! {result="refused"}`, `coffer_asset_catalog_refused` = 1) and logged, and the last good catalog
//! stays in force.

use std::fmt;
use std::str::FromStr;

use coffer_domain::{AssetCatalog, LiveCatalog};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::build::ASSETS_KEY;

/// The `result` label values of `coffer_asset_catalog_updates_total`.
pub const UPDATE_RESULTS: [&str; 2] = ["applied", "refused"];

/// The metrics of a role that follows the asset catalog.
#[derive(Clone)]
pub struct CatalogMetrics {
    updates: IntCounterVec,
    refused: IntGauge,
}

impl CatalogMetrics {
    /// Registers the metrics in `registry`, every label value at zero.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let updates = IntCounterVec::new(
            Opts::new(
                "coffer_asset_catalog_updates_total",
                "New versions of the asset catalog seen, by result (applied, refused)",
            ),
            &["result"],
        )?;
        let refused = IntGauge::new(
            "coffer_asset_catalog_refused",
            "1 while the latest version of the asset catalog was refused and the last good one is in force",
        )?;
        for result in UPDATE_RESULTS {
            updates.with_label_values(&[result]);
        }
        registry.register(Box::new(updates.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        Ok(CatalogMetrics { updates, refused })
    }
}

/// What became of one version offered to a [`CatalogFeed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Valid and now in force.
    Applied,
    /// The same text as the version seen before: nothing to do.
    Unchanged,
    /// Refused (the reason); the last good catalog stays in force.
    Refused(String),
}

/// Puts each valid new version of the catalog in force and keeps the last good one otherwise.
pub struct CatalogFeed {
    live: LiveCatalog,
    metrics: CatalogMetrics,
    /// The text of the latest version seen (applied or refused).
    last: String,
}

impl CatalogFeed {
    /// `current_text` is what the catalog in force was read from, so it is not applied again.
    pub fn new(live: LiveCatalog, current_text: String, metrics: CatalogMetrics) -> Self {
        CatalogFeed {
            live,
            metrics,
            last: current_text,
        }
    }

    /// The catalog this feed updates.
    pub fn live(&self) -> &LiveCatalog {
        &self.live
    }

    /// Offers a version of the assets file (`source` names where it came from, for the log).
    pub fn offer(&mut self, text: &str, source: &str) -> Offer {
        if text == self.last {
            return Offer::Unchanged;
        }
        self.last = text.to_string();
        match AssetCatalog::from_json(text) {
            Ok(catalog) => {
                self.live.replace(catalog);
                self.metrics.updates.with_label_values(&["applied"]).inc();
                self.metrics.refused.set(0);
                tracing::info!(source, "asset catalog updated");
                Offer::Applied
            }
            Err(error) => self.refuse(source, error.to_string()),
        }
    }

    /// Counts and logs a version that cannot be used; the catalog in force stays.
    pub fn refuse(&mut self, source: &str, reason: String) -> Offer {
        self.metrics.updates.with_label_values(&["refused"]).inc();
        self.metrics.refused.set(1);
        tracing::error!(source, error = %reason, "asset catalog refused; the last good one stays in force");
        Offer::Refused(reason)
    }
}

/// A ConfigMap named as `namespace/name` (`COFFER_ASSETS_CONFIGMAP=payments/prod-assets`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigMapRef {
    pub namespace: String,
    pub name: String,
}

impl FromStr for ConfigMapRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 253
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        match text.split_once('/') {
            Some((namespace, name)) if valid(namespace) && valid(name) => Ok(ConfigMapRef {
                namespace: namespace.into(),
                name: name.into(),
            }),
            _ => Err(format!(
                "{text:?} is not namespace/name of a ConfigMap (e.g. payments/prod-assets)"
            )),
        }
    }
}

impl fmt::Display for ConfigMapRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Connects with the pod's service account (or a kubeconfig) and follows the ConfigMap in a task
/// of its own; fails at once when there is no Kubernetes configuration at all.
pub async fn spawn_follower(config_map: ConfigMapRef, feed: CatalogFeed) -> anyhow::Result<()> {
    let client = Client::try_default().await.map_err(|error| {
        anyhow::anyhow!("COFFER_ASSETS_CONFIGMAP={config_map}: no Kubernetes configuration: {error}")
    })?;
    tracing::info!(config_map = %config_map, "following the asset catalog through the API server");
    tokio::spawn(follow_config_map(client, config_map, feed));
    Ok(())
}

/// Follows the ConfigMap through the API server (a list and watch selecting its name alone) and
/// offers the `assets.json` of each version to `feed`. Runs until its task is dropped; a failed
/// watch is logged and started again with backoff, and the catalog in force stays meanwhile.
pub async fn follow_config_map(client: Client, config_map: ConfigMapRef, mut feed: CatalogFeed) {
    let api: Api<ConfigMap> = Api::namespaced(client, &config_map.namespace);
    let selector = format!("metadata.name={}", config_map.name);
    let source = format!("configmap {config_map}");
    let events = watcher(api, watcher::Config::default().fields(&selector)).default_backoff();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                match object.data.as_ref().and_then(|data| data.get(ASSETS_KEY)) {
                    Some(text) => feed.offer(text, &source),
                    None => feed.refuse(&source, format!("the ConfigMap has no key {ASSETS_KEY}")),
                };
            }
            Ok(watcher::Event::Delete(_)) => {
                tracing::warn!(
                    source,
                    "the assets ConfigMap was deleted; the catalog in force stays"
                )
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(error) => {
                tracing::warn!(source, %error, "watching the assets ConfigMap failed; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = include_str!("../../../config/assets.dev.json");

    fn value(registry: &Registry, name: &str, result: Option<&str>) -> f64 {
        let family = registry.gather().into_iter().find(|f| f.name() == name).unwrap();
        let metric = family
            .get_metric()
            .iter()
            .find(|m| result.is_none_or(|r| m.get_label()[0].value() == r))
            .unwrap();
        metric.get_counter().get_value() + metric.get_gauge().get_value()
    }

    #[test]
    fn a_valid_version_is_applied_a_refused_one_keeps_the_last_good_and_says_so() {
        let registry = Registry::new();
        let live = LiveCatalog::new(AssetCatalog::from_json(DEV).unwrap());
        let mut feed = CatalogFeed::new(live.clone(), DEV.into(), CatalogMetrics::new(&registry).unwrap());
        assert_eq!(
            value(&registry, "coffer_asset_catalog_updates_total", Some("refused")),
            0.0
        );
        assert_eq!(feed.offer(DEV, "test"), Offer::Unchanged);

        let twelve = DEV.replace("\"confirmations_required\": 3", "\"confirmations_required\": 12");
        assert_eq!(feed.offer(&twelve, "test"), Offer::Applied);
        assert_eq!(live.current().get("ETH").unwrap().confirmations_required, 12);

        let too_precise = twelve.replace("\"withdrawal_min\": \"1\"", "\"withdrawal_min\": \"1.0000001\"");
        assert!(
            matches!(feed.offer(&too_precise, "test"), Offer::Refused(why) if why.contains("withdrawal_min"))
        );
        assert_eq!(live.current().get("ETH").unwrap().confirmations_required, 12);
        assert!(live.current().get("USDT").is_some());
        assert_eq!(value(&registry, "coffer_asset_catalog_refused", None), 1.0);
        assert_eq!(
            feed.offer(&too_precise, "test"),
            Offer::Unchanged,
            "refused once, not per look"
        );
        assert_eq!(
            value(&registry, "coffer_asset_catalog_updates_total", Some("refused")),
            1.0
        );

        assert_eq!(feed.offer(DEV, "test"), Offer::Applied);
        assert_eq!(value(&registry, "coffer_asset_catalog_refused", None), 0.0);
        assert_eq!(
            value(&registry, "coffer_asset_catalog_updates_total", Some("applied")),
            2.0
        );
    }

    #[test]
    fn config_map_refs_are_namespace_slash_name() {
        let parsed: ConfigMapRef = "payments/prod-assets".parse().unwrap();
        assert_eq!(
            (parsed.namespace.as_str(), parsed.name.as_str()),
            ("payments", "prod-assets")
        );
        assert_eq!(parsed.to_string(), "payments/prod-assets");
        for bad in ["prod-assets", "/prod-assets", "payments/", "Payments/x", "a/b/c"] {
            assert!(bad.parse::<ConfigMapRef>().is_err(), "{bad}");
        }
    }
}
