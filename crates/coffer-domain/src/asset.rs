//! Asset configuration: what the wallet supports. One source (a JSON file in development, fed by
//! the operator from `Asset` resources in a cluster), validated as a whole before it is used.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::amount::{ledger_max, Amount, AmountError, MAX_DECIMALS};

/// The file format (`config/assets.dev.json`, the operator's ConfigMap), version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetsFile {
    pub version: u32,
    pub assets: Vec<AssetSpec>,
}

/// One asset as written in the file. Limits are decimal strings in whole units ("0.5").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetSpec {
    pub symbol: String,
    pub chain: String,
    pub decimals: u8,
    /// The token contract for ERC-20 assets; `null` for the chain's native coin.
    pub contract: Option<String>,
    pub confirmations_required: u32,
    pub deposits_enabled: bool,
    pub withdrawals_enabled: bool,
    pub withdrawal_min: String,
    pub withdrawal_max: String,
    pub daily_withdrawal_limit: String,
    pub review_threshold: String,
    /// The risk policy of outgoing transfers between users (absent: none beyond the balance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferSpec>,
    /// Review decisions on movements above this need two different approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub two_person_review_above: Option<String>,
    /// Adjustments above this need a second approver after the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub two_person_adjustment_above: Option<String>,
    /// Caps of payment-rail deposits by rail name (`payment`); a rail absent here is uncapped.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rails: BTreeMap<String, RailSpec>,
    /// A block explorer's page of a chain transaction, `https://…{tx_hash}…` (the support
    /// console links chain references with it); absent: no link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explorer_tx_url: Option<String>,
}

/// The transfer policy of an asset as written in the file; each rule is off when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferSpec {
    /// A transfer above this needs a recent password login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reauthentication_above: Option<String>,
    /// Outgoing transfers per user and UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_limit: Option<String>,
    /// A transfer above this is held for a reviewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_threshold: Option<String>,
    /// The most a first transfer to a recipient may move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_recipient_max: Option<String>,
}

/// A payment rail's caps as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RailSpec {
    /// A deposit above this is held for a staff approval.
    pub deposit_max: String,
    /// Credits of this rail per UTC day; past it deposits are held.
    pub daily_limit: String,
}

/// The validated transfer policy (S3): `None` is a rule that is off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferPolicy {
    pub reauthentication_above: Option<Amount>,
    pub daily_limit: Option<Amount>,
    pub review_threshold: Option<Amount>,
    pub first_recipient_max: Option<Amount>,
}

/// A payment rail's validated caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RailLimits {
    pub deposit_max: Amount,
    pub daily_limit: Amount,
}

/// A validated asset, limits parsed to smallest units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetConfig {
    pub symbol: String,
    pub chain: String,
    pub decimals: u8,
    pub contract: Option<String>,
    pub confirmations_required: u32,
    pub deposits_enabled: bool,
    pub withdrawals_enabled: bool,
    pub withdrawal_min: Amount,
    pub withdrawal_max: Amount,
    pub daily_withdrawal_limit: Amount,
    pub review_threshold: Amount,
    pub transfer: TransferPolicy,
    pub two_person_review_above: Option<Amount>,
    pub two_person_adjustment_above: Option<Amount>,
    pub rails: BTreeMap<String, RailLimits>,
    /// `https://…{tx_hash}…`: a chain transaction's page on a block explorer.
    pub explorer_tx_url: Option<String>,
}

/// The placeholder of [`AssetConfig::explorer_tx_url`].
pub const EXPLORER_TX_PLACEHOLDER: &str = "{tx_hash}";
/// The longest explorer URL template.
pub const EXPLORER_URL_CHARS_MAX: usize = 200;

impl AssetConfig {
    /// The explorer page of chain transaction `tx_hash`, if the asset names an explorer.
    pub fn explorer_link(&self, tx_hash: &str) -> Option<String> {
        let hash_ok = tx_hash.len() == 66
            && tx_hash.starts_with("0x")
            && tx_hash[2..].bytes().all(|b| b.is_ascii_hexdigit());
        let template = self.explorer_tx_url.as_deref().filter(|_| hash_ok)?;
        Some(template.replace(EXPLORER_TX_PLACEHOLDER, tx_hash))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AssetError {
    #[error("the assets file is not valid JSON of version 1: {0}")]
    Format(String),
    #[error("asset symbol {0:?} must be 2 to 12 upper-case letters or digits")]
    Symbol(String),
    #[error("asset {symbol}: decimals must be at most {MAX_DECIMALS}")]
    Decimals { symbol: String },
    #[error("asset {symbol}: {field} is not a valid amount ({source})")]
    Limit {
        symbol: String,
        field: &'static str,
        source: AmountError,
    },
    #[error("asset {symbol}: withdrawal_min is above withdrawal_max")]
    LimitOrder { symbol: String },
    #[error("asset {symbol}: rail name {rail:?} must be 1 to 32 of a-z 0-9 _ -")]
    Rail { symbol: String, rail: String },
    #[error("asset {0} is declared twice")]
    Duplicate(String),
    #[error("asset {symbol}: explorer_tx_url must be an https:// URL of at most 200 characters containing {{tx_hash}}")]
    ExplorerUrl { symbol: String },
}

impl AssetSpec {
    pub fn validate(&self) -> Result<AssetConfig, AssetError> {
        let symbol = &self.symbol;
        let symbol_ok = (2..=12).contains(&symbol.len())
            && symbol
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !symbol_ok {
            return Err(AssetError::Symbol(symbol.clone()));
        }
        if self.decimals > MAX_DECIMALS {
            return Err(AssetError::Decimals {
                symbol: symbol.clone(),
            });
        }
        let limit = |field: &'static str, text: &str| {
            let amount = Amount::parse_decimal(text, self.decimals).map_err(|source| AssetError::Limit {
                symbol: symbol.clone(),
                field,
                source,
            })?;
            if amount > ledger_max() {
                return Err(AssetError::Limit {
                    symbol: symbol.clone(),
                    field,
                    source: AmountError::TooLarge,
                });
            }
            Ok(amount)
        };
        let mut config = AssetConfig {
            symbol: symbol.clone(),
            chain: self.chain.clone(),
            decimals: self.decimals,
            contract: self.contract.clone(),
            confirmations_required: self.confirmations_required,
            deposits_enabled: self.deposits_enabled,
            withdrawals_enabled: self.withdrawals_enabled,
            withdrawal_min: limit("withdrawal_min", &self.withdrawal_min)?,
            withdrawal_max: limit("withdrawal_max", &self.withdrawal_max)?,
            daily_withdrawal_limit: limit("daily_withdrawal_limit", &self.daily_withdrawal_limit)?,
            review_threshold: limit("review_threshold", &self.review_threshold)?,
            transfer: TransferPolicy::default(),
            two_person_review_above: None,
            two_person_adjustment_above: None,
            rails: BTreeMap::new(),
            explorer_tx_url: self.explorer_tx_url.clone(),
        };
        if let Some(url) = &self.explorer_tx_url {
            let url_ok = url.starts_with("https://")
                && url.contains(EXPLORER_TX_PLACEHOLDER)
                && url.chars().count() <= EXPLORER_URL_CHARS_MAX
                && !url
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '<' || c == '>');
            if !url_ok {
                return Err(AssetError::ExplorerUrl {
                    symbol: symbol.clone(),
                });
            }
        }
        let optional =
            |field: &'static str, text: &Option<String>| text.as_deref().map(|t| limit(field, t)).transpose();
        let transfer = self.transfer.clone().unwrap_or_default();
        config.transfer = TransferPolicy {
            reauthentication_above: optional(
                "transfer.reauthentication_above",
                &transfer.reauthentication_above,
            )?,
            daily_limit: optional("transfer.daily_limit", &transfer.daily_limit)?,
            review_threshold: optional("transfer.review_threshold", &transfer.review_threshold)?,
            first_recipient_max: optional("transfer.first_recipient_max", &transfer.first_recipient_max)?,
        };
        config.two_person_review_above = optional("two_person_review_above", &self.two_person_review_above)?;
        config.two_person_adjustment_above =
            optional("two_person_adjustment_above", &self.two_person_adjustment_above)?;
        for (rail, caps) in &self.rails {
            let named = (1..=32).contains(&rail.len())
                && rail
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            if !named {
                return Err(AssetError::Rail {
                    symbol: symbol.clone(),
                    rail: rail.clone(),
                });
            }
            let caps = RailLimits {
                deposit_max: limit("rails.deposit_max", &caps.deposit_max)?,
                daily_limit: limit("rails.daily_limit", &caps.daily_limit)?,
            };
            config.rails.insert(rail.clone(), caps);
        }
        if config.withdrawal_min > config.withdrawal_max {
            return Err(AssetError::LimitOrder {
                symbol: symbol.clone(),
            });
        }
        Ok(config)
    }
}

/// The validated set of assets, by symbol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssetCatalog {
    assets: BTreeMap<String, AssetConfig>,
}

impl AssetCatalog {
    /// Parses and validates a whole file; one bad asset refuses the whole file, so a running
    /// service keeps its last good catalog instead of half of a new one.
    pub fn from_json(text: &str) -> Result<Self, AssetError> {
        let file: AssetsFile = serde_json::from_str(text).map_err(|e| AssetError::Format(e.to_string()))?;
        if file.version != 1 {
            return Err(AssetError::Format(format!(
                "unsupported version {}",
                file.version
            )));
        }
        Self::from_specs(&file.assets)
    }

    pub fn from_specs(specs: &[AssetSpec]) -> Result<Self, AssetError> {
        let mut assets = BTreeMap::new();
        for spec in specs {
            let config = spec.validate()?;
            if assets.insert(config.symbol.clone(), config).is_some() {
                return Err(AssetError::Duplicate(spec.symbol.clone()));
            }
        }
        Ok(AssetCatalog { assets })
    }

    pub fn get(&self, symbol: &str) -> Option<&AssetConfig> {
        self.assets.get(symbol)
    }

    pub fn iter(&self) -> impl Iterator<Item = &AssetConfig> {
        self.assets.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV_ASSETS: &str = include_str!("../../../config/assets.dev.json");

    #[test]
    fn the_dev_assets_file_is_valid() {
        let catalog = AssetCatalog::from_json(DEV_ASSETS).unwrap();
        assert_eq!(catalog.get("ETH").unwrap().decimals, 18);
        assert_eq!(catalog.get("USDT").unwrap().decimals, 6);
        assert_eq!(
            catalog.get("USDT").unwrap().withdrawal_min,
            Amount::from_u64(1_000_000)
        );
    }

    #[test]
    fn one_bad_asset_refuses_the_whole_file() {
        let mut file: AssetsFile = serde_json::from_str(DEV_ASSETS).unwrap();
        file.assets[1].withdrawal_min = "1.0000001".into();
        let err = AssetCatalog::from_specs(&file.assets).unwrap_err();
        assert!(
            matches!(
                err,
                AssetError::Limit {
                    field: "withdrawal_min",
                    ..
                }
            ),
            "{err:?}"
        );
        file.assets[1] = file.assets[0].clone();
        assert_eq!(
            AssetCatalog::from_specs(&file.assets),
            Err(AssetError::Duplicate("ETH".into()))
        );
    }

    #[test]
    fn an_explorer_template_links_a_chain_hash_and_a_bad_one_is_refused() {
        let mut file: AssetsFile = serde_json::from_str(DEV_ASSETS).unwrap();
        let hash = format!("0x{}", "ab".repeat(32));
        let eth = file.assets[0].validate().unwrap();
        assert_eq!(eth.explorer_link(&hash), None, "no template: no link");
        file.assets[0].explorer_tx_url = Some("https://explorer.example/tx/{tx_hash}".into());
        let eth = file.assets[0].validate().unwrap();
        assert_eq!(
            eth.explorer_link(&hash).as_deref(),
            Some(format!("https://explorer.example/tx/{hash}").as_str())
        );
        assert_eq!(eth.explorer_link("0x1234"), None, "only a whole transaction hash");
        for bad in [
            "http://explorer.example/tx/{tx_hash}",
            "https://explorer.example/tx/",
            "https://explorer.example/tx/{tx_hash}\" onclick=\"x",
            "javascript:alert(1)//{tx_hash}",
        ] {
            file.assets[0].explorer_tx_url = Some(bad.into());
            assert_eq!(
                file.assets[0].validate(),
                Err(AssetError::ExplorerUrl { symbol: "ETH".into() }),
                "{bad}"
            );
        }
    }

    #[test]
    fn lower_case_symbols_are_refused() {
        let mut file: AssetsFile = serde_json::from_str(DEV_ASSETS).unwrap();
        file.assets[0].symbol = "eth".into();
        assert_eq!(
            AssetCatalog::from_specs(&file.assets),
            Err(AssetError::Symbol("eth".into()))
        );
    }
}

/// The catalog in force, swappable at run time (K4: asset changes apply without a restart).
/// Readers take a cheap snapshot; a reload replaces the whole catalog at once.
#[derive(Debug, Clone, Default)]
pub struct LiveCatalog(std::sync::Arc<std::sync::RwLock<std::sync::Arc<AssetCatalog>>>);

impl LiveCatalog {
    pub fn new(catalog: AssetCatalog) -> Self {
        LiveCatalog(std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(
            catalog,
        ))))
    }

    pub fn current(&self) -> std::sync::Arc<AssetCatalog> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn replace(&self, catalog: AssetCatalog) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = std::sync::Arc::new(catalog);
    }
}
