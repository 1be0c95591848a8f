use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// One Coffer installation: the api, outbox-publisher and reconciler workloads and their wiring.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "coffer.dev",
    version = "v1alpha1",
    kind = "WalletPlatform",
    namespaced,
    status = "WalletPlatformStatus",
    shortname = "wallet",
    shortname = "wallets",
    shortname = "wp",
    category = "coffer",
    doc = "A Coffer installation: the api, outbox-publisher and reconciler workloads, their Service, RBAC, autoscaling and monitoring.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    ),
    printcolumn(name = "Paused", type_ = "boolean", json_path = ".spec.paused"),
    printcolumn(name = "Assets", type_ = "integer", json_path = ".status.assets"),
    printcolumn(name = "Listeners", type_ = "integer", json_path = ".status.chainListeners"),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct WalletPlatformSpec {
    /// The `coffer` image every workload runs (one binary, one role per Deployment).
    #[schemars(length(min = 1))]
    pub image: String,
    /// Pull policy for that image.
    #[serde(default)]
    pub image_pull_policy: ImagePullPolicy,
    /// MongoDB replica set holding the ledger.
    pub mongodb: MongoDbSpec,
    /// RabbitMQ broker the outbox publishes to.
    pub rabbitmq: RabbitMqSpec,
    /// Secret signing the API's access tokens; key defaults to `secret`.
    pub jwt_secret_ref: SecretKeyRef,
    /// Secret holding the key that MACs audit records (`COFFER_AUDIT_KEY`: at least 32 random
    /// bytes, never in the database), given to every role; key defaults to `key`.
    pub audit_key_secret_ref: SecretKeyRef,
    /// Secret with the keys that seal users' personal data (docs/security.md), given to the api
    /// only (the one workload that reads users): key `key` (`COFFER_PII_KEY`), key `index-key`
    /// (`COFFER_PII_INDEX_KEY`), each 64 hex digits of 32 random bytes, and during a rotation
    /// `previous-keys` (`COFFER_PII_KEYS_PREVIOUS`, comma-separated; optional).
    pub pii_keys_secret_ref: PiiKeysSecretRef,
    /// The REST/WebSocket API.
    #[serde(default)]
    pub api: ApiSpec,
    /// The outbox relay to RabbitMQ.
    #[serde(default)]
    pub outbox_publisher: OutboxPublisherSpec,
    /// The books-proving reconciler (always one replica).
    #[serde(default)]
    pub reconciler: ReconcilerSpec,
    /// Proof of liabilities (docs/solvency.md): the key that signs statements (given to the api
    /// and the reconciler) and the reconciler's schedule. Absent: nothing is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liabilities: Option<LiabilitiesSpec>,
    /// Monitoring and tracing switches.
    #[serde(default)]
    pub observability: ObservabilitySpec,
    /// NetworkPolicies around the platform's pods and its in-namespace dependencies; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<super::NetworkPolicySpec>,
    /// Stop applying changes (maintenance window); status keeps being reported.
    #[serde(default)]
    pub paused: bool,
}

/// The Secret of the PII keys (its keys are fixed: `key`, `index-key`, `previous-keys`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PiiKeysSecretRef {
    /// Name of the Secret (same namespace as the platform).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// When the kubelet pulls the image.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// Where the ledger lives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoDbSpec {
    /// Secret holding the connection string (`MONGODB_URI`); key defaults to `uri`.
    pub secret_ref: SecretKeyRef,
    /// Database name (`COFFER_DATABASE`).
    #[serde(default = "default_database")]
    #[schemars(length(min = 1, max = 63))]
    pub database: String,
}

fn default_database() -> String {
    "coffer".into()
}

/// Where events are published.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RabbitMqSpec {
    /// Secret holding the AMQP URI (`AMQP_URI`); key defaults to `uri`.
    pub secret_ref: SecretKeyRef,
}

/// The API Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiSpec {
    /// Replicas when autoscaling is off.
    #[serde(default = "default_api_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// CPU and memory requests and limits of the api container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::resources_schema")]
    pub resources: Option<ResourceRequirements>,
    /// A HorizontalPodAutoscaler on CPU; when set it owns the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Verification tiers (docs/security.md, "Risk flags"); absent: the API's defaults
    /// (`unverified`, nothing leaves before the KYC provider verifies a user; basic gets 10 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kyc: Option<KycSpec>,
}

/// How the API treats users by verification tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KycSpec {
    /// The tier of a user the KYC provider has not assessed yet (`COFFER_KYC_DEFAULT_TIER`).
    #[serde(default)]
    pub default_tier: KycTier,
    /// The share of an asset's daily limits a user of the basic tier gets
    /// (`COFFER_KYC_BASIC_LIMIT_PERCENT`).
    #[serde(default = "default_basic_limit_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub basic_limit_percent: u8,
}

fn default_basic_limit_percent() -> u8 {
    10
}

/// A verification tier: `unverified` moves nothing out, `basic` moves out within a share of the
/// daily limits, `full` within all of them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KycTier {
    #[default]
    Unverified,
    Basic,
    Full,
}

impl KycTier {
    pub fn as_str(self) -> &'static str {
        match self {
            KycTier::Unverified => "unverified",
            KycTier::Basic => "basic",
            KycTier::Full => "full",
        }
    }
}

fn default_api_replicas() -> i32 {
    2
}

impl Default for ApiSpec {
    fn default() -> Self {
        ApiSpec {
            replicas: default_api_replicas(),
            resources: None,
            autoscaling: None,
            kyc: None,
        }
    }
}

/// CPU-based autoscaling of the API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = ("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas"))]
pub struct AutoscalingSpec {
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Average CPU utilisation (percent of requests) the autoscaler aims for.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
}

fn default_min_replicas() -> i32 {
    2
}
fn default_max_replicas() -> i32 {
    10
}
fn default_cpu_target() -> i32 {
    70
}

/// The outbox-publisher Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboxPublisherSpec {
    #[serde(default = "default_one")]
    #[schemars(range(min = 0, max = 20))]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::resources_schema")]
    pub resources: Option<ResourceRequirements>,
}

fn default_one() -> i32 {
    1
}

impl Default for OutboxPublisherSpec {
    fn default() -> Self {
        OutboxPublisherSpec {
            replicas: 1,
            resources: None,
        }
    }
}

/// The reconciler Deployment (one replica: two reconcilers would report twice).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReconcilerSpec {
    /// Seconds between two reconciliation runs (`COFFER_RECONCILE_INTERVAL_SECONDS`).
    #[serde(default = "default_interval_seconds")]
    #[schemars(range(min = 10, max = 86400))]
    pub interval_seconds: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::resources_schema")]
    pub resources: Option<ResourceRequirements>,
    /// Where the reconciler appends every audit shard's MACed head (`COFFER_AUDIT_HEADS_PATH`,
    /// a file under `/var/lib/coffer/audit-heads`), which `coffer audit verify --heads` checks
    /// the chains against. Absent: an emptyDir, which a new pod starts empty.
    #[serde(default)]
    pub audit_heads: AuditHeadsSpec,
}

/// The volume of the audit heads export. Mount a place the database writer cannot edit: a
/// PersistentVolumeClaim that no other workload mounts (ideally on retained, append-only or
/// versioned storage), so that rewriting the database cannot rewrite the export too.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditHeadsSpec {
    /// A PersistentVolumeClaim in the platform's namespace (ReadWriteOnce is enough: one
    /// reconciler, replaced by recreation); absent: an emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: Option<String>,
    /// Seconds between exported lines (`COFFER_AUDIT_EXPORT_INTERVAL_SECONDS`); absent: 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub export_interval_seconds: Option<u32>,
}

/// Proof-of-liabilities statements: who signs them and how often the reconciler publishes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LiabilitiesSpec {
    /// Secret with the hex of the deployment's 32-byte Ed25519 seed
    /// (`COFFER_LIABILITY_SIGNING_KEY`); key defaults to `key`.
    pub signing_key_secret_ref: SecretKeyRef,
    /// Seconds between the statements the reconciler publishes of every asset
    /// (`COFFER_LIABILITY_PUBLISH_INTERVAL_SECONDS`); absent: only on demand (finance, admin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 604800))]
    pub publish_interval_seconds: Option<u32>,
}

fn default_interval_seconds() -> u32 {
    300
}

impl Default for ReconcilerSpec {
    fn default() -> Self {
        ReconcilerSpec {
            interval_seconds: default_interval_seconds(),
            resources: None,
            audit_heads: AuditHeadsSpec::default(),
        }
    }
}

/// Monitoring switches. ServiceMonitor and PrometheusRule are only created when the
/// Prometheus Operator's CRDs exist in the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservabilitySpec {
    #[serde(default)]
    pub service_monitor: bool,
    #[serde(default)]
    pub prometheus_rule: bool,
    /// OTLP/HTTP endpoint for traces (`OTEL_EXPORTER_OTLP_ENDPOINT`), e.g. `http://otel-collector:4318`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub otlp_endpoint: Option<String>,
}

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WalletPlatformStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded, each with a machine-readable reason.
    #[serde(default)]
    #[x_kube(merge_strategy = kube::core::cel::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Valid Assets published in the `<name>-assets` ConfigMap.
    #[serde(default)]
    pub assets: i32,
    /// Assets refused (invalid or duplicate symbol); see each Asset's status.
    #[serde(default)]
    pub invalid_assets: i32,
    /// ChainListeners running for this platform.
    #[serde(default)]
    pub chain_listeners: i32,
}
