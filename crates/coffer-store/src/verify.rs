//! `coffer ledger verify`: recompute every balance from the ledger, in the database.
//!
//! Aggregations run server-side (`$group` + `$sum` over Decimal128, exact for Coffer's amounts),
//! so a large ledger is never pulled into memory.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, Decimal128, Document};

use crate::codec;
use crate::collections::{LEDGER_ENTRIES, WALLETS};
use crate::model::WalletDoc;
use crate::{Store, StoreError};

/// Checkpoints written per round of a full pass.
const CHECKPOINTS_PER_WRITE: usize = 500;

/// One difference the verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A cached balance differs from the sum of its ledger entries.
    BalanceMismatch {
        account_id: String,
        bucket: String,
        cached: String,
        ledger: String,
    },
    /// A transaction's postings do not sum to zero.
    UnbalancedTransaction { transaction_id: String, sum: String },
    /// An asset's postings in total do not sum to zero.
    UnbalancedAsset { asset: String, sum: String },
    /// Ledger entries point at an account that does not exist.
    UnknownAccount { account_id: String },
    /// An account's entries after its reconciliation checkpoint are not exactly one per sequence
    /// number up to its version (an entry missing, repeated, or written without moving the version).
    SequenceGap { account_id: String, detail: String },
}

#[derive(Debug, Default)]
pub struct Report {
    pub accounts_checked: u64,
    pub findings: Vec<Finding>,
}

fn signed(value: &Decimal128) -> Result<String, StoreError> {
    let (amount, negative) = codec::from_decimal(value)?;
    Ok(if negative {
        format!("-{amount}")
    } else {
        amount.to_string()
    })
}

impl Store {
    /// Recomputes every balance (read only: `coffer ledger verify`).
    pub async fn verify_ledger(&self) -> Result<Report, StoreError> {
        self.verify_ledger_full(false).await
    }

    /// The full pass of a reconciliation: [`Store::verify_ledger`], then every account that
    /// agreed gets a new checkpoint (crate::checkpoints), where incremental runs start.
    pub async fn verify_ledger_and_checkpoint(&self) -> Result<Report, StoreError> {
        self.verify_ledger_full(true).await
    }

    async fn verify_ledger_full(&self, checkpoint: bool) -> Result<Report, StoreError> {
        let mut report = Report::default();
        let entries = self.collection::<Document>(LEDGER_ENTRIES);

        let mut sums: BTreeMap<(String, String), String> = BTreeMap::new();
        let pipeline = vec![doc! { "$group": {
            "_id": { "account": "$account_id", "bucket": "$bucket" },
            "sum": { "$sum": "$amount" },
        } }];
        let mut cursor = entries.aggregate(pipeline).await?;
        while let Some(row) = cursor.try_next().await? {
            let id = row
                .get_document("_id")
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let account = id.get_str("account").unwrap_or_default().to_string();
            let bucket = id.get_str("bucket").unwrap_or_default().to_string();
            let sum = decimal_of(&row, "sum")?;
            sums.insert((account, bucket), signed(&sum)?);
        }

        let mut wallets = self.collection::<WalletDoc>(WALLETS).find(doc! {}).await?;
        let mut known = std::collections::BTreeSet::new();
        let mut agreed = Vec::new();
        while let Some(wallet) = wallets.try_next().await? {
            report.accounts_checked += 1;
            let findings_before = report.findings.len();
            for bucket in coffer_domain::Bucket::ALL {
                let value = wallet.bucket(bucket);
                let cached = signed(&codec::to_decimal(&value.magnitude, value.negative))?;
                let key = (wallet.id.clone(), bucket.as_str().to_string());
                let ledger = sums.get(&key).cloned().unwrap_or_else(|| "0".to_string());
                if cached != ledger {
                    report.findings.push(Finding::BalanceMismatch {
                        account_id: wallet.id.clone(),
                        bucket: bucket.as_str().to_string(),
                        cached,
                        ledger,
                    });
                }
            }
            if checkpoint && report.findings.len() == findings_before {
                agreed.push(wallet.clone());
                if agreed.len() == CHECKPOINTS_PER_WRITE {
                    self.write_checkpoints(&std::mem::take(&mut agreed)).await?;
                }
            }
            known.insert(wallet.id);
        }
        self.write_checkpoints(&agreed).await?;
        for (account, _) in sums.keys() {
            if !known.contains(account) {
                report.findings.push(Finding::UnknownAccount {
                    account_id: account.clone(),
                });
            }
        }
        report.findings.dedup();

        for (group, make) in [("$transaction_id", true), ("$asset", false)] {
            let pipeline = vec![
                doc! { "$group": { "_id": group, "sum": { "$sum": "$amount" } } },
                doc! { "$match": { "sum": { "$ne": codec::zero() } } },
            ];
            let mut cursor = entries.aggregate(pipeline).await?;
            while let Some(row) = cursor.try_next().await? {
                let id = row.get_str("_id").unwrap_or_default().to_string();
                let sum = signed(&decimal_of(&row, "sum")?)?;
                report.findings.push(if make {
                    Finding::UnbalancedTransaction {
                        transaction_id: id,
                        sum,
                    }
                } else {
                    Finding::UnbalancedAsset { asset: id, sum }
                });
            }
        }
        Ok(report)
    }
}

fn decimal_of(row: &Document, field: &str) -> Result<Decimal128, StoreError> {
    match row.get(field) {
        Some(mongodb::bson::Bson::Decimal128(d)) => Ok(*d),
        Some(mongodb::bson::Bson::Int32(0)) | Some(mongodb::bson::Bson::Int64(0)) => Ok(codec::zero()),
        other => Err(StoreError::Corrupt(format!("sum is not a Decimal128: {other:?}"))),
    }
}
