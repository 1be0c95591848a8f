//! Deposit addresses from an extended public key (BIP32). The configured key is the BIP44
//! account key `m/44'/60'/0'`; address `i` is its non-hardened child `0/i`, i.e. the standard
//! `m/44'/60'/0'/0/i`. Only public keys are derived: no private key exists in the API process.

use std::str::FromStr;

use alloy::primitives::Address;
use bip32::{ChildNumber, XPub};

use crate::ChainError;

/// The deposit address deriver.
#[derive(Clone)]
pub struct DepositKeys {
    external_chain: XPub,
}

impl std::fmt::Debug for DepositKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DepositKeys(..)")
    }
}

impl DepositKeys {
    /// Parses the account-level `xpub…` (`COFFER_DEPOSIT_XPUB`).
    pub fn from_xpub(text: &str) -> Result<Self, ChainError> {
        let account = XPub::from_str(text.trim()).map_err(|_| {
            ChainError::Derivation("COFFER_DEPOSIT_XPUB is not a valid extended public key".into())
        })?;
        let external_chain = account
            .derive_child(ChildNumber::new(0, false).expect("0 is a valid index"))
            .map_err(|e| ChainError::Derivation(e.to_string()))?;
        Ok(DepositKeys { external_chain })
    }

    /// The address at `index` (below 2^31).
    pub fn address(&self, index: u32) -> Result<Address, ChainError> {
        let child_number =
            ChildNumber::new(index, false).map_err(|e| ChainError::Derivation(e.to_string()))?;
        let child = self
            .external_chain
            .derive_child(child_number)
            .map_err(|e| ChainError::Derivation(e.to_string()))?;
        let point = child.public_key().to_encoded_point(false);
        Ok(Address::from_raw_public_key(&point.as_bytes()[1..]))
    }

    /// The address as Coffer stores it: lower-case `0x…`.
    pub fn address_string(&self, index: u32) -> Result<String, ChainError> {
        Ok(format!("{:#x}", self.address(index)?))
    }
}

/// Derives the account xpub `m/44'/60'/0'` of a BIP39 mnemonic (seed = PBKDF2-HMAC-SHA512,
/// 2048 rounds, salt "mnemonic"; the word list checksum is not checked). For tests and local
/// development only: production derives the xpub offline and configures only it.
pub fn account_xpub_of_mnemonic(phrase: &str) -> Result<String, ChainError> {
    let mut seed = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(phrase.trim().as_bytes(), b"mnemonic", 2048, &mut seed);
    let path = "m/44'/60'/0'"
        .parse::<bip32::DerivationPath>()
        .expect("a valid path");
    let account =
        bip32::XPrv::derive_from_path(seed, &path).map_err(|e| ChainError::Derivation(e.to_string()))?;
    Ok(account.public_key().to_string(bip32::Prefix::XPUB))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// anvil's and hardhat's well-known development mnemonic (never holds real funds).
    const DEV_MNEMONIC: &str = "test test test test test test test test test test test junk";

    #[test]
    fn the_dev_mnemonic_derives_anvils_well_known_accounts() {
        let keys = DepositKeys::from_xpub(&account_xpub_of_mnemonic(DEV_MNEMONIC).unwrap()).unwrap();
        assert_eq!(
            keys.address_string(0).unwrap(),
            "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
        );
        assert_eq!(
            keys.address_string(1).unwrap(),
            "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
        );
    }

    #[test]
    fn a_bad_xpub_is_refused_without_echoing_it() {
        let err = DepositKeys::from_xpub("xpub-not-really").unwrap_err().to_string();
        assert!(!err.contains("not-really"), "{err}");
    }
}
