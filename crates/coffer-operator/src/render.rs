//! Rendering resources to manifests without a cluster: what the golden tests compare and what a
//! platform team can use to preview a change.

use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::build::{
    build_platform, chain_listener_deployment, listener_egress_policy, select_assets, validate_listener,
    validate_platform, AssetSelection,
};
use crate::crd::{Asset, ChainListener, WalletPlatform};

/// Coffer resources read from a multi-document YAML file.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub platforms: Vec<WalletPlatform>,
    pub assets: Vec<Asset>,
    pub listeners: Vec<ChainListener>,
}

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("document {index} is not valid YAML: {source}")]
    Yaml { index: usize, source: serde_yaml::Error },
    #[error("document {index} ({kind}) does not match the {kind} schema: {source}")]
    Schema {
        index: usize,
        kind: String,
        source: serde_json::Error,
    },
    #[error("document {index} has kind {kind:?}, expected WalletPlatform, Asset or ChainListener")]
    Kind { index: usize, kind: String },
    #[error("WalletPlatform {name}: {message}")]
    InvalidPlatform { name: String, message: String },
}

impl Resources {
    /// Reads every `coffer.dev` document of a multi-document YAML stream (empty documents skipped).
    pub fn from_yaml(text: &str) -> Result<Self, RenderError> {
        let mut resources = Resources::default();
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_json::Value::deserialize(document)
                .map_err(|source| RenderError::Yaml { index, source })?;
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_string();
            let schema = |source| RenderError::Schema {
                index,
                kind: kind.clone(),
                source,
            };
            match kind.as_str() {
                "WalletPlatform" => resources
                    .platforms
                    .push(serde_json::from_value(value).map_err(schema)?),
                "Asset" => resources
                    .assets
                    .push(serde_json::from_value(value).map_err(schema)?),
                "ChainListener" => resources
                    .listeners
                    .push(serde_json::from_value(value).map_err(schema)?),
                _ => return Err(RenderError::Kind { index, kind }),
            }
        }
        Ok(resources)
    }

    /// The Assets that point at `platform` (same namespace, matching `platformRef`).
    pub fn assets_of(&self, platform: &WalletPlatform) -> Vec<Asset> {
        self.assets
            .iter()
            .filter(|a| belongs(platform, a.namespace(), &a.spec.platform_ref))
            .cloned()
            .collect()
    }

    /// The ChainListeners that point at `platform`.
    pub fn listeners_of(&self, platform: &WalletPlatform) -> Vec<ChainListener> {
        self.listeners
            .iter()
            .filter(|l| belongs(platform, l.namespace(), &l.spec.platform_ref))
            .cloned()
            .collect()
    }
}

fn belongs(platform: &WalletPlatform, namespace: Option<String>, platform_ref: &str) -> bool {
    namespace == platform.namespace() && platform_ref == platform.name_any()
}

/// Every object the operator would apply for `platform`, as multi-document YAML, preceded by a
/// comment with its verdict on each Asset.
pub fn render_platform(platform: &WalletPlatform, resources: &Resources) -> Result<String, RenderError> {
    validate_platform(platform).map_err(|message| RenderError::InvalidPlatform {
        name: platform.name_any(),
        message,
    })?;
    let selection: AssetSelection = select_assets(&resources.assets_of(platform));
    let mut out = String::new();
    for (name, verdict) in &selection.verdicts {
        out.push_str(&format!("# Asset {name}: {}\n", verdict.message()));
    }
    let objects = build_platform(platform, &selection, &resources.listeners_of(platform));
    push(&mut out, &objects.assets);
    push(&mut out, &objects.service_account);
    push(&mut out, &objects.role);
    push(&mut out, &objects.role_binding);
    push(&mut out, &objects.api_service);
    push(&mut out, &objects.metrics_service);
    for policy in &objects.network_policies {
        push(&mut out, policy);
    }
    for deployment in &objects.deployments {
        push(&mut out, deployment);
    }
    if let Some(hpa) = &objects.api_autoscaler {
        push(&mut out, hpa);
    }
    push(&mut out, &objects.api_disruption_budget);
    if let Some(monitor) = &objects.service_monitor {
        push(&mut out, monitor);
    }
    if let Some(rule) = &objects.prometheus_rule {
        push(&mut out, rule);
    }
    for listener in resources.listeners_of(platform) {
        if let Err(message) = validate_listener(&listener) {
            out.push_str(&format!("# ChainListener {}: {message}\n", listener.name_any()));
            continue;
        }
        match listener_egress_policy(platform, &listener) {
            Ok(Some(policy)) => push(&mut out, &policy),
            Ok(None) => {}
            Err(message) => {
                out.push_str(&format!("# ChainListener {}: {message}\n", listener.name_any()));
                continue;
            }
        }
        push(&mut out, &chain_listener_deployment(platform, &listener));
    }
    Ok(out)
}

fn push<T: Serialize>(out: &mut String, object: &T) {
    out.push_str(&crate::canonical_yaml(object));
}
