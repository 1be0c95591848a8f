//! Coffer's EVM adapter (docs/chain.md): deposit addresses derived from an extended public key,
//! the chain listener (deposits, confirmations, re-orgs, checkpoints), the withdrawal
//! broadcaster and the [`signer::Signer`] interface.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod broadcaster;
pub mod custody;
pub mod deposits;
pub mod hd;
pub mod listener;
pub mod metrics;
pub mod rpc;
pub mod signer;
pub mod sweep_signer;
pub mod sweeper;

use thiserror::Error;

/// Everything that can go wrong in this crate. Never carries a key, seed or signature.
#[derive(Debug, Error)]
pub enum ChainError {
    #[error("the node answered with an error or not at all: {0}")]
    Rpc(String),
    #[error(transparent)]
    Store(#[from] coffer_store::StoreError),
    #[error("a re-org deeper than the {0} blocks the cursor remembers: operator action needed")]
    ReorgTooDeep(usize),
    #[error("configuration: {0}")]
    Config(String),
    #[error("signing: {0}")]
    Signing(String),
    #[error("key derivation: {0}")]
    Derivation(String),
}
