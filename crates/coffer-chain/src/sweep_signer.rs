//! The [`DepositKeySigner`]: signs sweeps from per-user deposit addresses (docs/chain.md,
//! "Sweeping deposit addresses").
//!
//! The API derives deposit addresses from the account xpub only. The sweeper needs their private
//! keys: production puts a KMS or HSM behind this trait (the keys never leave it); the local
//! signer derives them from the account-level xprv `m/44'/60'/0'` read from a file (a mounted
//! Secret), child `0/i` as in [`crate::hd`], and keeps it in memory only, never in logs or errors.

use std::str::FromStr;

use alloy::consensus::TxEip1559;
use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use async_trait::async_trait;
use bip32::{ChildNumber, XPrv};
use secrecy::{ExposeSecret, SecretString};

use crate::hd::DepositKeys;
use crate::signer::SignedTx;
use crate::ChainError;

/// Signs transactions from deposit address `index` (`m/44'/60'/0'/0/index`).
#[async_trait]
pub trait DepositKeySigner: Send + Sync {
    /// The address of deposit key `index`.
    fn address(&self, index: u32) -> Result<Address, ChainError>;

    /// Signs `tx` (chain id, nonce, fees and payload already set) with deposit key `index`.
    async fn sign(&self, index: u32, tx: TxEip1559) -> Result<SignedTx, ChainError>;
}

/// Derives deposit keys from an account xprv held in process memory: development and tests.
pub struct LocalDepositSigner {
    external_chain: XPrv,
}

impl std::fmt::Debug for LocalDepositSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalDepositSigner(..)")
    }
}

impl LocalDepositSigner {
    /// From the account-level `xprv…` (`m/44'/60'/0'`), checked against the configured account
    /// xpub: a signer for other keys than the addresses users are given is refused at start.
    pub fn from_xprv(text: &SecretString, expected_xpub: &str) -> Result<Self, ChainError> {
        let account = XPrv::from_str(text.expose_secret().trim()).map_err(|_| {
            ChainError::Config("the deposit key file does not hold a valid extended private key".into())
        })?;
        let xpub = account.public_key().to_string(bip32::Prefix::XPUB);
        if xpub != expected_xpub.trim() {
            return Err(ChainError::Config(
                "the deposit xprv does not belong to COFFER_DEPOSIT_XPUB".into(),
            ));
        }
        let external_chain = account
            .derive_child(ChildNumber::new(0, false).expect("0 is a valid index"))
            .map_err(|e| ChainError::Derivation(e.to_string()))?;
        Ok(LocalDepositSigner { external_chain })
    }

    /// Reads the xprv from `path` (`--deposit-xprv-file`, `COFFER_DEPOSIT_XPRV_FILE`).
    pub fn from_file(path: &std::path::Path, expected_xpub: &str) -> Result<Self, ChainError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ChainError::Config(format!("reading the deposit key file {}: {e}", path.display()))
        })?;
        Self::from_xprv(&SecretString::from(text), expected_xpub)
    }

    fn key(&self, index: u32) -> Result<PrivateKeySigner, ChainError> {
        let child_number =
            ChildNumber::new(index, false).map_err(|e| ChainError::Derivation(e.to_string()))?;
        let child = self
            .external_chain
            .derive_child(child_number)
            .map_err(|e| ChainError::Derivation(e.to_string()))?;
        PrivateKeySigner::from_slice(&child.private_key().to_bytes())
            .map_err(|_| ChainError::Derivation("a derived key is not a valid secp256k1 key".into()))
    }
}

#[async_trait]
impl DepositKeySigner for LocalDepositSigner {
    fn address(&self, index: u32) -> Result<Address, ChainError> {
        Ok(self.key(index)?.address())
    }

    async fn sign(&self, index: u32, tx: TxEip1559) -> Result<SignedTx, ChainError> {
        crate::signer::sign_with(
            &self.key(index)?,
            tx,
            "the deposit signer refused the transaction",
        )
    }
}

/// Derives the account xprv `m/44'/60'/0'` of a BIP39 mnemonic, as
/// [`crate::hd::account_xpub_of_mnemonic`] derives its xpub. Tests and local development only.
pub fn account_xprv_of_mnemonic(phrase: &str) -> Result<SecretString, ChainError> {
    let mut seed = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(phrase.trim().as_bytes(), b"mnemonic", 2048, &mut seed);
    let path = "m/44'/60'/0'"
        .parse::<bip32::DerivationPath>()
        .expect("a valid path");
    let account = XPrv::derive_from_path(seed, &path).map_err(|e| ChainError::Derivation(e.to_string()))?;
    Ok(SecretString::from(
        account.to_string(bip32::Prefix::XPRV).as_str().to_owned(),
    ))
}

/// Whether `signer` and `keys` agree on the first addresses (a cheap start-up check that the
/// signer's keys are the addresses the API hands out).
pub fn agrees_with(
    signer: &dyn DepositKeySigner,
    keys: &DepositKeys,
    first: u32,
) -> Result<bool, ChainError> {
    for index in 0..first {
        if signer.address(index)? != keys.address(index)? {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hd::account_xpub_of_mnemonic;

    const DEV_MNEMONIC: &str = "test test test test test test test test test test test junk";

    #[tokio::test]
    async fn deposit_keys_match_the_xpub_addresses_and_sign_for_them() {
        let xpub = account_xpub_of_mnemonic(DEV_MNEMONIC).unwrap();
        let xprv = account_xprv_of_mnemonic(DEV_MNEMONIC).unwrap();
        let signer = LocalDepositSigner::from_xprv(&xprv, &xpub).unwrap();
        let keys = DepositKeys::from_xpub(&xpub).unwrap();
        assert!(agrees_with(&signer, &keys, 5).unwrap());
        assert_eq!(
            format!("{:#x}", signer.address(0).unwrap()),
            "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
        );
        let signed = signer.sign(3, crate::signer::tests::tx(0)).await.unwrap();
        use alloy::consensus::SignableTransaction;
        use alloy::eips::eip2718::Decodable2718;
        let decoded = alloy::consensus::TxEnvelope::decode_2718(&mut signed.raw.as_slice()).unwrap();
        let inner = decoded.as_eip1559().unwrap();
        let from = inner
            .signature()
            .recover_address_from_prehash(&inner.tx().signature_hash())
            .unwrap();
        assert_eq!(from, keys.address(3).unwrap());
    }

    #[test]
    fn a_foreign_or_bad_xprv_is_refused_without_echoing_it() {
        let xprv = account_xprv_of_mnemonic(DEV_MNEMONIC).unwrap();
        let other = account_xpub_of_mnemonic("abandon abandon abandon").unwrap();
        let error = LocalDepositSigner::from_xprv(&xprv, &other)
            .unwrap_err()
            .to_string();
        assert!(error.contains("does not belong"), "{error}");
        assert!(!error.contains("xprv9") && !error.contains(xprv.expose_secret()));
        let bad = LocalDepositSigner::from_xprv(&SecretString::from("xprv-deadbeef"), &other)
            .unwrap_err()
            .to_string();
        assert!(!bad.contains("deadbeef"), "{bad}");
        let xpub = account_xpub_of_mnemonic(DEV_MNEMONIC).unwrap();
        let signer = LocalDepositSigner::from_xprv(&xprv, &xpub).unwrap();
        assert_eq!(format!("{signer:?}"), "LocalDepositSigner(..)");
    }
}
