//! Pure builders: a resource (plus what the controller looked up) in, the desired objects out.
//! No IO here, so every object the operator applies is covered by golden-file tests.

mod assets;
mod listener;
mod monitoring;
mod network;
mod platform;
mod pod;

pub use assets::{assets_config_map, select_assets, to_domain, AssetSelection, AssetVerdict};
pub use listener::{
    chain_listener_deployment, chain_listener_deployment_name, validate_listener, DEPOSIT_KEY_DEFAULT_KEY,
};
pub use monitoring::{prometheus_rule, prometheus_rule_resource, service_monitor, service_monitor_resource};
pub use network::{
    listener_egress_policy, listener_egress_policy_name, listener_reaches_api_server,
    platform_network_policies, platform_network_policy_names,
};
pub use platform::{build_platform, validate_platform, PlatformObjects, Unwanted};

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

/// The one field manager for every server-side apply the operator does.
pub const MANAGER: &str = "coffer-operator";
/// Where workloads find the assets file (a ConfigMap mounted as a directory, so kubelet updates it in place).
pub const ASSETS_DIR: &str = "/etc/coffer";
/// `ASSETS_DIR` + the ConfigMap key.
pub const ASSETS_FILE_PATH: &str = "/etc/coffer/assets.json";
/// The ConfigMap key holding the `AssetsFile` JSON.
pub const ASSETS_KEY: &str = "assets.json";
/// Port of the API (and its health probes).
pub const API_PORT: i32 = 8080;
/// Port named `metrics` of every workload: the workers' health and metrics server, the API's
/// operations port (`COFFER_METRICS_LISTEN`), never the public API port.
pub const METRICS_PORT: i32 = 9090;
/// Label carrying the platform name on everything the operator creates.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Label carrying the ChainListener name on its Deployment and pods.
pub const LISTENER_LABEL: &str = "coffer.dev/chain-listener";
/// Label marking pods with a `metrics` port (the headless metrics Service selects it).
pub const METRICS_LABEL: &str = "coffer.dev/metrics";
/// Label of the headless metrics Service, which the ServiceMonitor selects.
pub const SCRAPE_LABEL: &str = "coffer.dev/scrape";
/// `app.kubernetes.io/managed-by` value, used to select what the operator watches.
pub const MANAGED_BY: &str = "coffer-operator";

/// The workload roles of the `coffer` binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Api,
    OutboxPublisher,
    Reconciler,
    ChainListener,
}

impl Component {
    /// The subcommand, the container name and the `app.kubernetes.io/component` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Api => "api",
            Component::OutboxPublisher => "outbox-publisher",
            Component::Reconciler => "reconciler",
            Component::ChainListener => "chain-listener",
        }
    }
}

/// The labels Kubernetes users expect on every object, from one place.
pub fn labels(platform: &str, component: Option<Component>, image: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "coffer".to_string()),
        (INSTANCE_LABEL.to_string(), platform.to_string()),
        ("app.kubernetes.io/part-of".to_string(), "coffer".to_string()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
        ("app.kubernetes.io/version".to_string(), image_version(image)),
    ]);
    if let Some(component) = component {
        labels.insert("app.kubernetes.io/component".into(), component.as_str().into());
    }
    labels
}

/// The immutable subset of [`labels`] used in selectors.
pub fn selector_labels(platform: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "coffer".to_string()),
        (INSTANCE_LABEL.to_string(), platform.to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            component.as_str().to_string(),
        ),
    ])
}

/// The image tag as a valid label value (`ghcr.io/x/coffer:0.1.0@sha256:..` → `0.1.0`).
pub fn image_version(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_segment = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let tag = last_segment
        .split_once(':')
        .map(|(_, tag)| tag)
        .unwrap_or("latest");
    let cleaned: String = tag
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(63)
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        "latest".into()
    } else {
        trimmed.into()
    }
}

/// Metadata for an object named `name` in the owner's namespace, controlled by `owner`.
pub(crate) fn owned_meta<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: String,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: owner.namespace(),
        labels: Some(labels),
        owner_references: Some(owner_reference(owner).into_iter().collect()),
        ..ObjectMeta::default()
    }
}

/// A controller owner reference (none when the owner has no uid yet, e.g. in a dry run).
pub(crate) fn owner_reference<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    owner.controller_owner_ref(&())
}

/// Name of the platform's assets ConfigMap.
pub fn assets_config_map_name(platform: &str) -> String {
    format!("{platform}-assets")
}

/// Name of a platform component's Deployment (and of the API Service).
pub fn deployment_name(platform: &str, component: Component) -> String {
    format!("{platform}-{}", component.as_str())
}

/// Name of the headless Service over every pod's metrics port (what the ServiceMonitor scrapes).
pub fn metrics_service_name(platform: &str) -> String {
    format!("{platform}-metrics")
}

/// Name of the ServiceAccount, Role and RoleBinding of the workloads.
pub fn service_account_name(platform: &str) -> String {
    platform.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_version_is_a_valid_label_value() {
        assert_eq!(image_version("ghcr.io/coffer/coffer:0.1.0"), "0.1.0");
        assert_eq!(image_version("localhost:5000/coffer"), "latest");
        assert_eq!(image_version("coffer:dev@sha256:abcd"), "dev");
        assert_eq!(image_version("coffer:-weird+tag-"), "weirdtag");
    }
}
