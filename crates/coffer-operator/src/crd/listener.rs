use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// A chain follower for one platform: becomes its own single-replica Deployment.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "coffer.dev",
    version = "v1alpha1",
    kind = "ChainListener",
    namespaced,
    status = "ChainListenerStatus",
    shortname = "cl",
    category = "coffer",
    doc = "A chain listener of a WalletPlatform: follows one chain through a JSON-RPC endpoint and credits deposits.",
    printcolumn(name = "Chain", type_ = "string", json_path = ".spec.chain"),
    printcolumn(name = "Platform", type_ = "string", json_path = ".spec.platformRef"),
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
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "!has(self.sweep) || has(self.signerSecretRef)",
    "sweep requires signerSecretRef: sweeps go to that hot wallet"
))]
pub struct ChainListenerSpec {
    /// Name of the WalletPlatform (same namespace) this listener feeds.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = ("self == oldSelf", "platformRef is immutable"))]
    pub platform_ref: String,
    /// Chain identifier, as in Asset.spec.chain.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    #[x_kube(validation = ("self == oldSelf", "chain is immutable: checkpoints belong to one chain"))]
    pub chain: String,
    /// Secret holding the JSON-RPC URL (`ETH_RPC_URL`); key defaults to `url`.
    pub rpc_secret_ref: SecretKeyRef,
    /// Secret holding the hot wallet's private key (hex) for the development signer; key defaults
    /// to `key`. When set, the listener also broadcasts this chain's withdrawals; the key is
    /// mounted read-only as a file (`COFFER_SIGNER_KEY_FILE`), never put in an environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_secret_ref: Option<SecretKeyRef>,
    /// Where the node is (and anything else this listener must reach, e.g. an OTLP collector), as
    /// NetworkPolicy egress rules. Required for a listener with a signer on a platform with
    /// `networkPolicy`: the pod holding the hot wallet's key may then reach only these, DNS and
    /// the platform's MongoDB.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = (
        "self.all(rule, has(rule.to) && size(rule.to) > 0)",
        "every rpcEgress rule names where it goes: a rule without `to` allows everything"
    ))]
    pub rpc_egress: Vec<k8s_openapi::api::networking::v1::NetworkPolicyEgressRule>,
    /// Milliseconds between two polls of the node (`COFFER_POLL_INTERVAL_MS`).
    #[serde(default = "default_poll_interval_ms")]
    #[schemars(range(min = 100, max = 600000))]
    pub poll_interval_ms: u32,
    /// Block to start from when no checkpoint exists yet (`COFFER_START_BLOCK`); default: the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_block: Option<u64>,
    /// When the broadcaster re-signs a stuck withdrawal with the same nonce and higher fees
    /// (only with `signerSecretRef`); defaults: 300 s, 500 gwei.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<ReplacementSpec>,
    /// Sweeping deposit addresses to the hot wallet (docs/chain.md, "Sweeping deposit
    /// addresses"); requires `signerSecretRef`: sweeps go to that hot wallet. Absent: no sweeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::resources_schema")]
    pub resources: Option<ResourceRequirements>,
}

/// Replacement of stuck withdrawals (docs/chain.md, "Stuck withdrawals").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplacementSpec {
    /// A broadcast withdrawal unmined this long is re-signed (`COFFER_WITHDRAWAL_REPLACE_AFTER_SECONDS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub after_seconds: Option<u32>,
    /// The highest max fee per gas any version may offer (`COFFER_MAX_FEE_PER_GAS_CAP_GWEI`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_fee_per_gas_cap_gwei: Option<u32>,
}

/// Sweeping deposit addresses (docs/chain.md, "Sweeping deposit addresses"). Each policy field
/// absent: the role's default.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SweepSpec {
    /// Secret holding the deposit addresses' account-level extended private key (the xprv of
    /// `m/44'/60'/0'`); key defaults to `xprv`. Mounted read-only as a file
    /// (`COFFER_DEPOSIT_XPRV_FILE`), never put in an environment variable.
    pub deposit_key_secret_ref: SecretKeyRef,
    /// The account xpub the API derives deposit addresses from (`COFFER_DEPOSIT_XPUB`, the API's
    /// value): the listener refuses to start with an xprv that does not match it.
    #[schemars(regex(pattern = r"^[xt]pub[1-9A-HJ-NP-Za-km-z]{107}$"))]
    pub deposit_xpub: String,
    /// Coin balances below this are dust and not swept, a decimal string in whole units
    /// (`COFFER_SWEEP_MIN_AMOUNT`); absent: 0.01.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,78}(\.[0-9]{1,78})?$"), length(max = 160))]
    pub min_amount: Option<String>,
    /// Token balances below this are dust and not swept, a decimal string in each token's units
    /// (`COFFER_SWEEP_TOKEN_MIN_AMOUNT`); absent: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,78}(\.[0-9]{1,78})?$"), length(max = 160))]
    pub token_min_amount: Option<String>,
    /// Deposit addresses looked at per round (`COFFER_SWEEP_BATCH_MAX`); absent: 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub batch_max: Option<u32>,
    /// A round is skipped while base fee + tip is above this, in gwei per gas
    /// (`COFFER_SWEEP_GAS_PRICE_CEILING_GWEI`); absent: 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub gas_price_ceiling_gwei: Option<u32>,
}

fn default_poll_interval_ms() -> u32 {
    2000
}

/// What the operator did with this listener.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainListenerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded (missing secret, unknown platform).
    #[serde(default)]
    #[x_kube(merge_strategy = kube::core::cel::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The Deployment running this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}
