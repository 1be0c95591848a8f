//! Coffer's domain model. Pure: no IO, no clocks except where a caller passes a time in.
//!
//! Everything that moves money is expressed here first (an [`ledger::LedgerTransaction`] that is
//! balanced by construction, a [`state::TxState`] transition that is checked), and the adapters
//! (MongoDB, HTTP, chains) only persist or transport what this crate has validated.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod account;
pub mod amount;
pub mod asset;
pub mod book;
pub mod conversion;
pub mod events;
pub mod gas;
pub mod history;
pub mod ledger;
pub mod liabilities;
pub mod movement;
pub mod plan;
pub mod policy;
pub mod replacement;
pub mod returns;
pub mod state;
pub mod sweep;

pub use account::{AccountKind, Bucket};
pub use amount::{Amount, AmountError};
pub use asset::{AssetCatalog, AssetConfig, AssetError, AssetsFile, LiveCatalog};
pub use book::{AccountBalances, Book, BookRefusal, SignedAmount};
pub use ledger::{LedgerError, LedgerTransaction, Posting, Side, TxKind};
pub use movement::{LimitCharge, Movement, PlannedEvent, WalletRef};
pub use plan::{ChainDeposit, Origin, Refusal};
pub use state::{StateChange, TransitionError, TxState};
