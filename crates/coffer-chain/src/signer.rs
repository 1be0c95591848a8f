//! The [`Signer`] interface of the withdrawal broadcaster, and the local development signer.
//!
//! Production plugs a KMS or HSM in behind the same trait (the key never leaves it); the local
//! signer reads a hex private key from a file (a mounted Kubernetes Secret) and keeps it in
//! memory only, never in logs or errors.

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::TxSignerSync;
use alloy::primitives::{Address, B256};
use alloy::signers::local::PrivateKeySigner;
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use crate::ChainError;

/// A signed transaction ready to broadcast.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedTx {
    /// EIP-2718 encoding, what `eth_sendRawTransaction` takes.
    pub raw: Vec<u8>,
    pub hash: B256,
}

impl std::fmt::Debug for SignedTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedTx")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Signs the hot wallet's transactions.
#[async_trait]
pub trait Signer: Send + Sync {
    /// The hot wallet's address.
    fn address(&self) -> Address;

    /// Signs `tx` (chain id, nonce, fees and payload already set).
    async fn sign(&self, tx: TxEip1559) -> Result<SignedTx, ChainError>;
}

/// Signs with a private key held in process memory: development and tests only.
pub struct LocalSigner {
    key: PrivateKeySigner,
}

impl std::fmt::Debug for LocalSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSigner")
            .field("address", &self.key.address())
            .finish_non_exhaustive()
    }
}

impl LocalSigner {
    /// From a hex private key (`0x` optional, surrounding whitespace ignored).
    pub fn from_hex(key: &SecretString) -> Result<Self, ChainError> {
        let text = key.expose_secret().trim();
        let key = text
            .parse::<PrivateKeySigner>()
            .map_err(|_| ChainError::Config("the signer key is not a 32-byte hex private key".into()))?;
        Ok(LocalSigner { key })
    }

    /// Reads the key from `path` (e.g. a mounted Secret).
    pub fn from_file(path: &std::path::Path) -> Result<Self, ChainError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ChainError::Config(format!("reading the signer key file {}: {e}", path.display()))
        })?;
        Self::from_hex(&SecretString::from(text))
    }

    /// A fresh random key (tests).
    pub fn random() -> Self {
        LocalSigner {
            key: PrivateKeySigner::random(),
        }
    }
}

#[async_trait]
impl Signer for LocalSigner {
    fn address(&self) -> Address {
        self.key.address()
    }

    async fn sign(&self, tx: TxEip1559) -> Result<SignedTx, ChainError> {
        sign_with(&self.key, tx, "the local signer refused the transaction")
    }
}

/// Signs `tx` with a key in memory, EIP-2718 encoded; `refused` is the error's (key-free) text.
pub(crate) fn sign_with(
    key: &PrivateKeySigner,
    mut tx: TxEip1559,
    refused: &str,
) -> Result<SignedTx, ChainError> {
    let signature = key
        .sign_transaction_sync(&mut tx)
        .map_err(|_| ChainError::Signing(refused.into()))?;
    let envelope = TxEnvelope::Eip1559(tx.into_signed(signature));
    Ok(SignedTx {
        raw: envelope.encoded_2718(),
        hash: *envelope.tx_hash(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloy::primitives::{TxKind, U256};

    /// A plain coin transfer at `nonce` on anvil's chain id (also the sweep signer's tests').
    pub(crate) fn tx(nonce: u64) -> TxEip1559 {
        TxEip1559 {
            chain_id: 31337,
            nonce,
            gas_limit: 21_000,
            max_fee_per_gas: 2_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            to: TxKind::Call(Address::repeat_byte(0x11)),
            value: U256::from(5u64),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn signing_is_deterministic_and_recovers_to_the_hot_wallet() {
        // anvil's second well-known development key (public knowledge, never funded on a real chain).
        let key = SecretString::from("0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d\n");
        let signer = LocalSigner::from_hex(&key).unwrap();
        assert_eq!(
            format!("{:#x}", signer.address()),
            "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
        );
        let first = signer.sign(tx(7)).await.unwrap();
        assert_eq!(
            first,
            signer.sign(tx(7)).await.unwrap(),
            "RFC 6979: same input, same bytes"
        );
        assert_ne!(first.hash, signer.sign(tx(8)).await.unwrap().hash);
        use alloy::eips::eip2718::Decodable2718;
        let decoded = TxEnvelope::decode_2718(&mut first.raw.as_slice()).unwrap();
        let signed = decoded.as_eip1559().expect("an EIP-1559 transaction");
        let recovered = signed
            .signature()
            .recover_address_from_prehash(&signed.tx().signature_hash())
            .unwrap();
        assert_eq!(recovered, signer.address());
        assert_eq!(*decoded.tx_hash(), first.hash);
    }

    #[test]
    fn a_bad_key_is_refused_without_echoing_it() {
        let error = LocalSigner::from_hex(&SecretString::from("0xnot-a-key-deadbeef")).unwrap_err();
        assert!(!error.to_string().contains("deadbeef"), "{error}");
        let debug = format!("{:?}", LocalSigner::random());
        assert!(debug.starts_with("LocalSigner { address:"), "{debug}");
    }
}
