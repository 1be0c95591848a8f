//! The `coffer.dev/v1alpha1` custom resources: what a platform team declares with `kubectl`.

// The derive's repeated `printcolumn(type_ = ...)` entries trip clippy's duplicated-attribute lint.
#[allow(clippy::duplicated_attributes)]
mod asset;
#[allow(clippy::duplicated_attributes)]
mod listener;
mod network;
#[allow(clippy::duplicated_attributes)]
mod platform;

pub use asset::{Asset, AssetSpec, AssetStatus};
pub use listener::{ChainListener, ChainListenerSpec, ChainListenerStatus, ReplacementSpec, SweepSpec};
pub use network::{DependencyNetwork, NetworkPolicySpec};
pub use platform::{
    ApiSpec, AuditHeadsSpec, AutoscalingSpec, ImagePullPolicy, LiabilitiesSpec, MongoDbSpec,
    ObservabilitySpec, OutboxPublisherSpec, PiiKeysSecretRef, RabbitMqSpec, ReconcilerSpec, WalletPlatform,
    WalletPlatformSpec, WalletPlatformStatus,
};

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Coffer resource.
pub const GROUP: &str = "coffer.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every Coffer resource.
pub const API_VERSION: &str = "coffer.dev/v1alpha1";

/// A key in a Secret of the resource's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret (same namespace as the resource).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret; each reference documents its own default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

impl SecretKeyRef {
    /// The key to read, or `default` when the reference names none.
    pub fn key_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.key.as_deref().unwrap_or(default)
    }
}

/// Condition types every Coffer resource reports.
pub mod condition {
    /// The resource is applied and its workloads are available (Assets: valid and published).
    pub const READY: &str = "Ready";
    /// The operator is moving the cluster towards the spec (rollout, paused, waiting).
    pub const PROGRESSING: &str = "Progressing";
    /// Something is wrong that the user must fix; `reason` says what.
    pub const DEGRADED: &str = "Degraded";
}

/// A compact schema for `resources` (requests and limits as quantities): the full
/// `ResourceRequirements` schema repeats a 2 kB description of Quantity for every map.
pub(crate) fn resources_schema(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
    let quantities = |what: &str| {
        serde_json::json!({
            "description": what,
            "type": "object",
            "additionalProperties": {
                "x-kubernetes-int-or-string": true,
                "anyOf": [{ "type": "integer" }, { "type": "string" }],
            },
        })
    };
    schemars::json_schema!({
        "description": "Compute resources of the container, as in a Pod: requests and limits (`cpu`, `memory`).",
        "nullable": true,
        "type": "object",
        "properties": {
            "requests": quantities("Minimum resources the scheduler reserves."),
            "limits": quantities("Maximum resources the container may use."),
        },
    })
}
