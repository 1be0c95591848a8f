use std::collections::{BTreeMap, HashMap};

use coffer_domain::asset::{AssetSpec as DomainAssetSpec, AssetsFile};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use super::{assets_config_map_name, labels, owned_meta, ASSETS_KEY};
use crate::crd::{Asset, WalletPlatform};

/// What the operator decided about one Asset resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssetVerdict {
    /// Valid and in the published file.
    Published,
    /// Refused by `AssetSpec::validate`; the message says why.
    Invalid(String),
    /// Another (older) Asset of the same platform already declares this symbol.
    Duplicate { symbol: String, kept: String },
}

impl AssetVerdict {
    /// The Degraded reason for a refused asset.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            AssetVerdict::Published => None,
            AssetVerdict::Invalid(_) => Some("InvalidAsset"),
            AssetVerdict::Duplicate { .. } => Some("DuplicateSymbol"),
        }
    }

    /// A message a platform team can act on.
    pub fn message(&self) -> String {
        match self {
            AssetVerdict::Published => "valid and published to the platform's assets file".into(),
            AssetVerdict::Invalid(why) => why.clone(),
            AssetVerdict::Duplicate { symbol, kept } => {
                format!("symbol {symbol} is already declared by Asset {kept}; this one is ignored")
            }
        }
    }
}

/// The assets file a platform publishes and the verdict on every Asset that points at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetSelection {
    pub file: AssetsFile,
    /// By Asset resource name.
    pub verdicts: BTreeMap<String, AssetVerdict>,
}

impl AssetSelection {
    pub fn published(&self) -> usize {
        self.file.assets.len()
    }

    pub fn refused(&self) -> usize {
        self.verdicts.len() - self.published()
    }
}

/// The domain's view of an Asset spec (the CRD maps onto it field by field).
pub fn to_domain(asset: &Asset) -> DomainAssetSpec {
    let spec = &asset.spec;
    DomainAssetSpec {
        symbol: spec.symbol.clone(),
        chain: spec.chain.clone(),
        decimals: spec.decimals,
        contract: spec.contract.clone(),
        confirmations_required: spec.confirmations_required,
        deposits_enabled: spec.deposits_enabled,
        withdrawals_enabled: spec.withdrawals_enabled,
        withdrawal_min: spec.withdrawal_min.clone(),
        withdrawal_max: spec.withdrawal_max.clone(),
        daily_withdrawal_limit: spec.daily_withdrawal_limit.clone(),
        review_threshold: spec.review_threshold.clone(),
        transfer: spec
            .transfer
            .as_ref()
            .map(|t| coffer_domain::asset::TransferSpec {
                reauthentication_above: t.reauthentication_above.clone(),
                daily_limit: t.daily_limit.clone(),
                review_threshold: t.review_threshold.clone(),
                first_recipient_max: t.first_recipient_max.clone(),
            }),
        two_person_review_above: spec.two_person_review_above.clone(),
        two_person_adjustment_above: spec.two_person_adjustment_above.clone(),
        rails: spec
            .rails
            .iter()
            .map(|(rail, caps)| {
                let caps = coffer_domain::asset::RailSpec {
                    deposit_max: caps.deposit_max.clone(),
                    daily_limit: caps.daily_limit.clone(),
                };
                (rail.clone(), caps)
            })
            .collect(),
        explorer_tx_url: spec.explorer_tx_url.clone(),
    }
}

/// Validates every Asset with the services' own rules and keeps the valid ones. The oldest Asset
/// wins a duplicated symbol, because the services refuse a file that declares one twice.
/// The file lists assets by symbol, so its bytes do not depend on the order of a list call.
pub fn select_assets(assets: &[Asset]) -> AssetSelection {
    let mut ordered: Vec<&Asset> = assets.iter().collect();
    ordered.sort_by_key(|a| (a.creation_timestamp().map(|t| t.0), a.name_any()));
    let mut verdicts = BTreeMap::new();
    let mut kept_by_symbol: HashMap<String, String> = HashMap::new();
    let mut published = Vec::new();
    for asset in ordered {
        let name = asset.name_any();
        let spec = to_domain(asset);
        let verdict = match (spec.validate(), kept_by_symbol.get(&spec.symbol)) {
            (Err(error), _) => AssetVerdict::Invalid(error.to_string()),
            (Ok(_), Some(kept)) => AssetVerdict::Duplicate {
                symbol: spec.symbol.clone(),
                kept: kept.clone(),
            },
            (Ok(_), None) => {
                kept_by_symbol.insert(spec.symbol.clone(), name.clone());
                published.push(spec);
                AssetVerdict::Published
            }
        };
        verdicts.insert(name, verdict);
    }
    published.sort_by(|a, b| a.symbol.cmp(&b.symbol));
    AssetSelection {
        file: AssetsFile {
            version: 1,
            assets: published,
        },
        verdicts,
    }
}

/// The `<platform>-assets` ConfigMap with `assets.json` in the `AssetsFile` v1 format.
pub fn assets_config_map(platform: &WalletPlatform, file: &AssetsFile) -> ConfigMap {
    let name = platform.name_any();
    let mut json = serde_json::to_string_pretty(file).expect("an AssetsFile serialises to JSON");
    json.push('\n');
    ConfigMap {
        metadata: owned_meta(
            platform,
            assets_config_map_name(&name),
            labels(&name, None, &platform.spec.image),
        ),
        data: Some(BTreeMap::from([(ASSETS_KEY.to_string(), json)])),
        ..ConfigMap::default()
    }
}
