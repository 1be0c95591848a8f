use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// One asset the wallet supports. Maps 1:1 onto `coffer_domain::asset::AssetSpec`; the operator
/// validates it with the same code the services use and publishes the valid ones of a platform in
/// the `<platform>-assets` ConfigMap, which the services re-read without restarting.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "coffer.dev",
    version = "v1alpha1",
    kind = "Asset",
    namespaced,
    status = "AssetStatus",
    category = "coffer",
    doc = "An asset the wallet supports on one chain: decimals, contract, confirmation threshold, deposit and withdrawal switches and limits.",
    printcolumn(name = "Symbol", type_ = "string", json_path = ".spec.symbol"),
    printcolumn(name = "Chain", type_ = "string", json_path = ".spec.chain"),
    printcolumn(name = "Platform", type_ = "string", json_path = ".spec.platformRef"),
    printcolumn(
        name = "Confirmations",
        type_ = "integer",
        json_path = ".spec.confirmationsRequired"
    ),
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "In use", type_ = "boolean", json_path = ".status.inUse"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Degraded")].reason"#,
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "double(self.withdrawalMin) <= double(self.withdrawalMax)",
    "withdrawalMin must not exceed withdrawalMax"
))]
pub struct AssetSpec {
    /// Name of the WalletPlatform (same namespace) that serves this asset.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = ("self == oldSelf", "platformRef is immutable"))]
    pub platform_ref: String,
    /// Ticker, 2 to 12 upper-case letters or digits (`ETH`, `USDT`).
    #[schemars(regex(pattern = r"^[A-Z0-9]{2,12}$"))]
    #[x_kube(validation = ("self == oldSelf", "symbol is immutable"))]
    pub symbol: String,
    /// Chain identifier shared with ChainListener.spec.chain (`ethereum`, `ethereum-dev`).
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    #[x_kube(validation = ("self == oldSelf", "chain is immutable"))]
    pub chain: String,
    /// Decimals of the smallest unit; immutable because stored amounts are scaled by it.
    #[x_kube(validation = ("self == oldSelf", "decimals are immutable: stored amounts are scaled by them"))]
    pub decimals: u8,
    /// ERC-20 contract address; absent for the chain's native coin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^0x[0-9a-fA-F]{40}$"))]
    pub contract: Option<String>,
    /// Confirmations before a deposit becomes available.
    #[schemars(range(max = 10000))]
    pub confirmations_required: u32,
    #[serde(default = "default_true")]
    pub deposits_enabled: bool,
    #[serde(default = "default_true")]
    pub withdrawals_enabled: bool,
    /// Smallest withdrawal, a decimal string in whole units ("0.0001").
    #[schemars(regex(pattern = r"^[0-9]{1,78}(\.[0-9]{1,78})?$"), length(max = 160))]
    pub withdrawal_min: String,
    /// Largest single withdrawal, decimal string.
    #[schemars(regex(pattern = r"^[0-9]{1,78}(\.[0-9]{1,78})?$"), length(max = 160))]
    pub withdrawal_max: String,
    /// Withdrawals per user per day, decimal string.
    #[schemars(regex(pattern = r"^[0-9]{1,78}(\.[0-9]{1,78})?$"), length(max = 160))]
    pub daily_withdrawal_limit: String,
    /// Withdrawals at or above this go to manual review, decimal string.
    #[schemars(regex(pattern = r"^[0-9]{1,78}(\.[0-9]{1,78})?$"), length(max = 160))]
    pub review_threshold: String,
    /// The risk policy of outgoing transfers between users; each rule is off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferPolicySpec>,
    /// Review decisions on movements above this need two different approvers, decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,78}(\.[0-9]{1,78})?$"), length(max = 160))]
    pub two_person_review_above: Option<String>,
    /// Adjustments above this need a second, different approver, decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,78}(\.[0-9]{1,78})?$"), length(max = 160))]
    pub two_person_adjustment_above: Option<String>,
    /// Caps of payment-rail deposits by rail name (`payment`); a rail absent here is uncapped.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 16))]
    pub rails: BTreeMap<String, RailCapsSpec>,
    /// A block explorer's page of a chain transaction, `https://…{tx_hash}…`: the support console
    /// links chain references with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https://\S*\{tx_hash\}\S*$"), length(max = 200))]
    pub explorer_tx_url: Option<String>,
}

/// The risk policy of outgoing transfers of one asset (decimal strings in whole units).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferPolicySpec {
    /// A transfer above this needs a recent password login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,78}(\.[0-9]{1,78})?$"), length(max = 160))]
    pub reauthentication_above: Option<String>,
    /// Outgoing transfers per user and UTC day (scaled by the user's verification tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,78}(\.[0-9]{1,78})?$"), length(max = 160))]
    pub daily_limit: Option<String>,
    /// A transfer above this is held for a reviewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,78}(\.[0-9]{1,78})?$"), length(max = 160))]
    pub review_threshold: Option<String>,
    /// The most a first transfer to a recipient may move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,78}(\.[0-9]{1,78})?$"), length(max = 160))]
    pub first_recipient_max: Option<String>,
}

/// A payment rail's caps (decimal strings in whole units).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RailCapsSpec {
    /// A deposit above this waits for a staff approval.
    #[schemars(regex(pattern = r"^[0-9]{1,78}(\.[0-9]{1,78})?$"), length(max = 160))]
    pub deposit_max: String,
    /// Credits of this rail per UTC day; past it deposits wait for a staff approval.
    #[schemars(regex(pattern = r"^[0-9]{1,78}(\.[0-9]{1,78})?$"), length(max = 160))]
    pub daily_limit: String,
}

fn default_true() -> bool {
    true
}

/// Whether the asset is valid and published to its platform.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (valid and published), Progressing, Degraded (invalid, duplicate, no platform).
    #[serde(default)]
    #[x_kube(merge_strategy = kube::core::cel::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// True when this asset is in the platform's published assets file.
    #[serde(default)]
    pub in_use: bool,
}
