//! Sweeps of deposit addresses to the hot wallet (docs/chain.md, "Sweeping deposit addresses").
//!
//! One document per (chain, address, nonce), whose `_id` is exactly that: claiming a sweep is
//! inserting it, and a second replica (or a restarted process) planning the same address at the
//! same nonce gets [`StoreError::AlreadyExists`] and signs nothing. Every later step is a
//! conditional update on the state (`planned → signed → broadcasted → confirmed | failed`), and
//! the signed bytes are stored before anything is sent: a sweep is signed once. Its gas, as the
//! receipt reports it, is booked against custody in the same database transaction as the
//! confirmed state.
//!
//! A token sweep whose address lacks the coin for its gas is funded first: the hot wallet's
//! transfer is signed with the hot wallet's next nonce, taken from the same nonce record the
//! withdrawal broadcaster uses (`withdrawals::advance_nonce`) in the same database transaction
//! that stores its bytes on the sweep; its gas is booked when it is confirmed.

use coffer_domain::movement::Movement;
use coffer_domain::sweep::SweepState;
use futures::TryStreamExt;
use mongodb::bson::{doc, to_bson, DateTime};
use serde::{Deserialize, Serialize};

use crate::batch::write_one;
use crate::withdrawals::{advance_nonce, nonce_key};
use crate::{Store, StoreError};

pub const SWEEPS: &str = "sweeps";

/// One sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepDoc {
    /// `<chain>:<address>:<nonce>`.
    #[serde(rename = "_id")]
    pub id: String,
    pub chain: String,
    /// The swept asset (the chain's coin for a native sweep).
    pub asset: String,
    /// The deposit address, lower-case `0x…`, and its BIP32 index.
    pub address: String,
    pub index: i64,
    pub nonce: i64,
    /// The hot wallet.
    pub to: String,
    /// Atomic units of `asset`, decimal.
    pub value: String,
    /// The token's contract for a token sweep (`None`: the chain's coin).
    #[serde(default)]
    pub contract: Option<String>,
    /// The coin the hot wallet must send first for a token sweep's gas (atomic, decimal).
    #[serde(default)]
    pub funding_needed: Option<String>,
    /// That transfer, once signed.
    #[serde(default)]
    pub funding: Option<FundingDoc>,
    pub gas_limit: i64,
    pub max_fee_per_gas: i64,
    pub max_priority_fee_per_gas: i64,
    /// A [`SweepState`] name.
    pub state: String,
    /// The latest signed version (`value` and the fee fields above are its own).
    pub raw_tx: Option<String>,
    pub tx_hash: Option<String>,
    /// When the latest version was signed (`None` in sweeps stored before replacement existed:
    /// `updated_at` stands in).
    #[serde(default, with = "crate::codec::time_opt")]
    pub signed_at: Option<crate::codec::Time>,
    /// Earlier versions replaced with higher fees (same nonce), oldest first: any one of them may
    /// still be mined instead of the latest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<TxVersion>,
    /// The hash of the version the chain mined (set with the final state).
    #[serde(default)]
    pub mined_tx_hash: Option<String>,
    /// From the receipt.
    pub gas_used: Option<i64>,
    pub effective_gas_price: Option<i64>,
    /// The gas booked as a fee (atomic units of the chain's coin), and its ledger transaction.
    pub fee: Option<String>,
    pub fee_transaction_id: Option<String>,
    #[serde(with = "crate::codec::time")]
    pub created_at: crate::codec::Time,
    #[serde(with = "crate::codec::time")]
    pub updated_at: crate::codec::Time,
}

/// The hot wallet's transfer of gas to a deposit address before its token sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FundingDoc {
    /// The hot wallet, lower-case `0x…`, and the nonce taken from its record.
    pub from: String,
    pub nonce: i64,
    /// Atomic units of the chain's coin, decimal.
    pub value: String,
    /// The latest signed version.
    pub raw_tx: String,
    pub tx_hash: String,
    /// The latest version's EIP-1559 fee fields, wei per gas (0 in fundings stored before
    /// replacement existed).
    #[serde(default)]
    pub max_fee_per_gas: i64,
    #[serde(default)]
    pub max_priority_fee_per_gas: i64,
    /// When the latest version was signed (`None` before replacement existed: the sweep's
    /// `updated_at` stands in).
    #[serde(default, with = "crate::codec::time_opt")]
    pub signed_at: Option<crate::codec::Time>,
    /// Earlier versions replaced with higher fees (same hot-wallet nonce), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<TxVersion>,
    /// The hash of the version the chain mined (set with `funded` or `failed`).
    #[serde(default)]
    pub mined_tx_hash: Option<String>,
    pub gas_used: Option<i64>,
    pub effective_gas_price: Option<i64>,
    pub fee: Option<String>,
    pub fee_transaction_id: Option<String>,
}

/// One signed version of a sweep or of its funding: all versions share a nonce, so at most one
/// is ever mined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxVersion {
    pub tx_hash: String,
    pub raw_tx: String,
    /// What it sends (atomic units, decimal): a replaced native sweep sends less.
    pub value: String,
    pub max_fee_per_gas: i64,
    pub max_priority_fee_per_gas: i64,
    #[serde(default, with = "crate::codec::time_opt")]
    pub signed_at: Option<crate::codec::Time>,
}

/// The most versions a sweep or a funding keeps (the original and its replacements), as for
/// withdrawals.
pub const VERSIONS_MAX: usize = coffer_domain::replacement::VERSIONS_MAX;

impl FundingDoc {
    /// A funding of hot wallet `from` at `nonce` whose only version is `first`.
    pub fn first(from: String, nonce: i64, first: TxVersion) -> FundingDoc {
        FundingDoc {
            from,
            nonce,
            value: first.value,
            raw_tx: first.raw_tx,
            tx_hash: first.tx_hash,
            max_fee_per_gas: first.max_fee_per_gas,
            max_priority_fee_per_gas: first.max_priority_fee_per_gas,
            signed_at: first.signed_at,
            replaced: Vec::new(),
            mined_tx_hash: None,
            gas_used: None,
            effective_gas_price: None,
            fee: None,
            fee_transaction_id: None,
        }
    }

    /// The latest version.
    pub fn latest(&self) -> TxVersion {
        TxVersion {
            tx_hash: self.tx_hash.clone(),
            raw_tx: self.raw_tx.clone(),
            value: self.value.clone(),
            max_fee_per_gas: self.max_fee_per_gas,
            max_priority_fee_per_gas: self.max_priority_fee_per_gas,
            signed_at: self.signed_at,
        }
    }

    /// Every version, oldest first, the latest last.
    pub fn versions(&self) -> Vec<TxVersion> {
        let mut all = self.replaced.clone();
        all.push(self.latest());
        all
    }

    /// This funding with `next` as its latest version and the current one kept in `replaced`.
    pub fn replaced_by(&self, next: TxVersion) -> FundingDoc {
        let mut record = self.clone();
        record.replaced.push(self.latest());
        record.tx_hash = next.tx_hash;
        record.raw_tx = next.raw_tx;
        record.value = next.value;
        record.max_fee_per_gas = next.max_fee_per_gas;
        record.max_priority_fee_per_gas = next.max_priority_fee_per_gas;
        record.signed_at = next.signed_at;
        record
    }
}

/// Which of a sweep's transactions was mined: the sweep itself, or its gas funding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    Sweep,
    Funding,
}

impl Leg {
    /// Where the leg's receipt fields live in the document.
    fn field(self, name: &str) -> String {
        match self {
            Leg::Sweep => name.to_string(),
            Leg::Funding => format!("funding.{name}"),
        }
    }
}

impl SweepDoc {
    pub fn state(&self) -> Option<SweepState> {
        SweepState::parse(&self.state)
    }

    pub fn key(chain: &str, address: &str, nonce: u64) -> String {
        format!("{chain}:{address}:{nonce}")
    }

    /// The latest signed version, once signed.
    pub fn latest(&self) -> Option<TxVersion> {
        Some(TxVersion {
            tx_hash: self.tx_hash.clone()?,
            raw_tx: self.raw_tx.clone()?,
            value: self.value.clone(),
            max_fee_per_gas: self.max_fee_per_gas,
            max_priority_fee_per_gas: self.max_priority_fee_per_gas,
            signed_at: self.signed_at,
        })
    }

    /// Every signed version, oldest first, the latest last (empty before signing).
    pub fn versions(&self) -> Vec<TxVersion> {
        let mut all = self.replaced.clone();
        all.extend(self.latest());
        all
    }
}

/// The most sweeps one page returns.
pub const SWEEP_PAGE_MAX: u32 = 500;

impl Store {
    /// The index the sweeper's reads of open sweeps use (`open_sweeps`, `sweeps`).
    pub(crate) async fn ensure_sweep_indexes(&self) -> Result<(), StoreError> {
        let options = mongodb::options::IndexOptions::builder()
            .name("by_chain_state".to_string())
            .build();
        let model = mongodb::IndexModel::builder()
            .keys(doc! { "chain": 1, "state": 1, "created_at": 1 })
            .options(options)
            .build();
        self.collection::<SweepDoc>(SWEEPS).create_index(model).await?;
        Ok(())
    }

    /// Claims a sweep: inserts it as planned. [`StoreError::AlreadyExists`] when this address
    /// already has a sweep at this nonce (another replica, or an earlier round).
    pub async fn claim_sweep(&self, sweep: &SweepDoc) -> Result<(), StoreError> {
        debug_assert_eq!(sweep.state, SweepState::Planned.as_str());
        match self.collection::<SweepDoc>(SWEEPS).insert_one(sweep).await {
            Ok(_) => Ok(()),
            Err(e) if crate::is_duplicate_key(&e) => Err(StoreError::AlreadyExists),
            Err(e) => Err(e.into()),
        }
    }

    /// Non-final sweeps of `chain` (an address with one is not planned again), oldest first.
    pub async fn open_sweeps(&self, chain: &str, limit: u32) -> Result<Vec<SweepDoc>, StoreError> {
        let open = [
            SweepState::Planned,
            SweepState::Funding,
            SweepState::Funded,
            SweepState::Signed,
            SweepState::Broadcasted,
        ]
        .map(|s| s.as_str());
        Ok(self
            .collection::<SweepDoc>(SWEEPS)
            .find(doc! { "chain": chain, "state": { "$in": open.to_vec() } })
            .sort(doc! { "created_at": 1 })
            .limit(i64::from(limit.clamp(1, SWEEP_PAGE_MAX)))
            .await?
            .try_collect()
            .await?)
    }

    /// Every sweep of `chain`, oldest first (tests, inspection).
    pub async fn sweeps(&self, chain: &str, limit: u32) -> Result<Vec<SweepDoc>, StoreError> {
        Ok(self
            .collection::<SweepDoc>(SWEEPS)
            .find(doc! { "chain": chain })
            .sort(doc! { "created_at": 1 })
            .limit(i64::from(limit.clamp(1, SWEEP_PAGE_MAX)))
            .await?
            .try_collect()
            .await?)
    }

    /// Stores the signed transaction of a planned (or funded) sweep, before it is sent. Nothing
    /// is written ([`StoreError::StateConflict`]) if the sweep is no longer planned or funded,
    /// or has bytes already: the caller discards its signature unsent.
    pub async fn record_sweep_signed(&self, id: &str, raw_tx: &str, tx_hash: &str) -> Result<(), StoreError> {
        let signable = [SweepState::Planned, SweepState::Funded].map(|s| s.as_str());
        let updated = self
            .collection::<SweepDoc>(SWEEPS)
            .update_one(
                doc! { "_id": id, "state": { "$in": signable.to_vec() }, "raw_tx": null },
                doc! { "$set": {
                    "state": SweepState::Signed.as_str(), "raw_tx": raw_tx, "tx_hash": tx_hash,
                    "signed_at": DateTime::now(), "updated_at": DateTime::now(),
                } },
            )
            .await?;
        if updated.matched_count != 1 {
            return Err(StoreError::StateConflict);
        }
        Ok(())
    }

    /// Stores the signed gas funding of planned sweep `id` and takes its nonce from the hot
    /// wallet's record (`recorded` is what the caller read before signing), in one database
    /// transaction, before it is sent. [`StoreError::StateConflict`] (nothing written; the
    /// signature is discarded unsent) if the sweep moved on or another writer took the nonce.
    pub async fn record_sweep_funding(
        &self,
        chain: &str,
        id: &str,
        recorded: Option<i64>,
        funding: &FundingDoc,
    ) -> Result<(), StoreError> {
        let shared = std::sync::Arc::new((
            self.clone(),
            chain.to_string(),
            id.to_string(),
            recorded,
            funding.clone(),
        ));
        self.with_transaction(|session| {
            let shared = shared.clone();
            Box::pin(async move {
                let (store, chain, id, recorded, funding) = &*shared;
                let key = nonce_key(chain, &funding.from);
                advance_nonce(store, session, &key, *recorded, funding.nonce + 1).await?;
                let updated = store
                    .collection::<SweepDoc>(SWEEPS)
                    .update_one(
                        doc! { "_id": id.as_str(), "state": SweepState::Planned.as_str(), "funding": null },
                        doc! { "$set": {
                            "state": SweepState::Funding.as_str(), "funding": to_bson(funding)?,
                            "updated_at": DateTime::now(),
                        } },
                    )
                    .session(&mut *session)
                    .await?;
                if updated.matched_count != 1 {
                    return Err(StoreError::StateConflict);
                }
                Ok(())
            })
        })
        .await
    }

    /// Stores `next`, the replacement of broadcast sweep `current`'s latest version (same nonce,
    /// higher fees, a value that still fits), keeping that version in `replaced`, before it is
    /// sent. [`StoreError::StateConflict`] (nothing written; the caller discards its signature
    /// unsent) if the sweep moved on or its latest version is no longer `current`'s (another
    /// replica replaced it first).
    pub async fn record_sweep_replacement(
        &self,
        current: &SweepDoc,
        next: &TxVersion,
    ) -> Result<(), StoreError> {
        let latest = current.latest().ok_or(StoreError::StateConflict)?;
        let updated = self
            .collection::<SweepDoc>(SWEEPS)
            .update_one(
                doc! {
                    "_id": &current.id, "state": SweepState::Broadcasted.as_str(),
                    "tx_hash": &latest.tx_hash,
                },
                doc! {
                    "$set": {
                        "raw_tx": &next.raw_tx, "tx_hash": &next.tx_hash, "value": &next.value,
                        "max_fee_per_gas": next.max_fee_per_gas,
                        "max_priority_fee_per_gas": next.max_priority_fee_per_gas,
                        "signed_at": DateTime::now(), "updated_at": DateTime::now(),
                    },
                    "$push": { "replaced": to_bson(&latest)? },
                },
            )
            .await?;
        if updated.matched_count != 1 {
            return Err(StoreError::StateConflict);
        }
        Ok(())
    }

    /// Stores `next` (from [`FundingDoc::replaced_by`]: the same hot-wallet nonce, higher fees)
    /// as the gas funding of sweep `id`, before it is sent, only while the sweep is funding and
    /// `current_hash` is still the funding's latest version. The nonce record does not move: the
    /// replacement spends the nonce the first version took. [`StoreError::StateConflict`]
    /// (nothing written; the signature is discarded unsent) otherwise.
    pub async fn record_funding_replacement(
        &self,
        id: &str,
        current_hash: &str,
        next: &FundingDoc,
    ) -> Result<(), StoreError> {
        let updated = self
            .collection::<SweepDoc>(SWEEPS)
            .update_one(
                doc! {
                    "_id": id, "state": SweepState::Funding.as_str(),
                    "funding.tx_hash": current_hash, "funding.nonce": next.nonce,
                },
                doc! { "$set": { "funding": to_bson(next)?, "updated_at": DateTime::now() } },
            )
            .await?;
        if updated.matched_count != 1 {
            return Err(StoreError::StateConflict);
        }
        Ok(())
    }

    /// `from → to` without money (signed → broadcasted, planned → failed).
    pub async fn move_sweep(&self, id: &str, from: SweepState, to: SweepState) -> Result<(), StoreError> {
        if !from.can_become(to) {
            return Err(StoreError::StateConflict);
        }
        let updated = self
            .collection::<SweepDoc>(SWEEPS)
            .update_one(
                doc! { "_id": id, "state": from.as_str() },
                doc! { "$set": { "state": to.as_str(), "updated_at": DateTime::now() } },
            )
            .await?;
        if updated.matched_count != 1 {
            return Err(StoreError::StateConflict);
        }
        Ok(())
    }

    /// Records a mined leg of a sweep: the sweep itself (`to` is Confirmed, or Failed for a
    /// reverted one) or its gas funding (`to` is Funded, or Failed): the state, which version was
    /// mined (`mined_tx_hash`), its receipt's gas and, when it cost anything, the domain's booking `fee` of it
    /// (`coffer_domain::sweep::plan_gas_fee`), in one database transaction.
    /// [`StoreError::StateConflict`] if another writer recorded it first.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_sweep(
        &self,
        sweep: &SweepDoc,
        leg: Leg,
        from: SweepState,
        to: SweepState,
        mined_tx_hash: &str,
        (gas_used, effective_gas_price): (u64, u128),
        fee: Option<Movement>,
    ) -> Result<(), StoreError> {
        let mined = match leg {
            Leg::Sweep => to.is_final(),
            Leg::Funding => matches!(to, SweepState::Funded | SweepState::Failed),
        };
        if !from.can_become(to) || !mined {
            return Err(StoreError::StateConflict);
        }
        let price = i64::try_from(effective_gas_price)
            .map_err(|_| StoreError::Corrupt("an effective gas price above i64".into()))?;
        let gas = i64::try_from(gas_used).map_err(|_| StoreError::Corrupt("gas used above i64".into()))?;
        let movement = fee;
        if let Some(movement) = &movement {
            self.ensure_platform_accounts(movement.ledger.asset(), movement.decimals)
                .await?;
        }
        let accounts = movement
            .as_ref()
            .map(|m| m.ledger.account_ids())
            .unwrap_or_default();
        let _guard = self.lock_accounts(&accounts).await?;
        let shared = std::sync::Arc::new((
            self.clone(),
            sweep.id.clone(),
            movement,
            leg,
            from,
            to,
            gas,
            price,
            mined_tx_hash.to_string(),
        ));
        self.with_transaction(|session| {
            let shared = shared.clone();
            Box::pin(async move {
                let (store, id, movement, leg, from, to, gas, price, mined_hash) = &*shared;
                let mut set = doc! { "state": to.as_str(), "updated_at": DateTime::now() };
                set.insert(leg.field("mined_tx_hash"), mined_hash.as_str());
                set.insert(leg.field("gas_used"), *gas);
                set.insert(leg.field("effective_gas_price"), *price);
                if let Some(movement) = movement {
                    set.insert(leg.field("fee"), movement.amount.to_string());
                    set.insert(leg.field("fee_transaction_id"), &movement.transaction_id);
                }
                let updated = store
                    .collection::<SweepDoc>(SWEEPS)
                    .update_one(
                        doc! { "_id": id.as_str(), "state": from.as_str() },
                        doc! { "$set": set },
                    )
                    .session(&mut *session)
                    .await?;
                if updated.matched_count != 1 {
                    return Err(StoreError::StateConflict);
                }
                if let Some(movement) = movement {
                    write_one(&store.db, session, store.audit_keys(), movement.clone().into()).await?;
                }
                Ok(())
            })
        })
        .await
    }
}
