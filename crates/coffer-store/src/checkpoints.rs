//! Incremental reconciliation (issue 17 item 5): a run's cost grows with what changed since the
//! accounts were last verified, not with the size of the ledger.
//!
//! Every ledger entry carries its account's sequence number (`seq`, the account's `version` right
//! after it), and an account's `version` moves in the same transaction as the entry. A checkpoint
//! (`reconcile_checkpoints`, one per account) is an account's `version` and three balances at the
//! moment a run verified them against the ledger. An incremental run reads every account (its
//! cached document) and, for each whose `version` moved past its checkpoint, only the entries
//! `seq ∈ (checkpoint, version]` (a bounded range of the `account_id, seq` index). They must be
//! exactly `version − checkpoint` entries, one per sequence number, and the checkpoint plus their
//! amounts must be the cached balances. Once an account shows version V, every entry up to V has
//! committed with it, so no snapshot is needed. Transactions of those entries are checked to sum
//! to zero, and every asset to sum to zero over the ledger's side of its accounts (checkpoints
//! plus the entries read).
//!
//! What only a full pass sees: entries pointing at accounts that do not exist, and entries
//! without `seq` (written before statements existed). A full pass (`Store::verify_ledger`) runs
//! when no checkpoint exists and on a slower schedule, and rewrites every checkpoint it verified.

use std::collections::{BTreeMap, BTreeSet};

use coffer_domain::ledger::BalanceDelta;
use coffer_domain::{Bucket, SignedAmount};
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Document};
use serde::{Deserialize, Serialize};

use crate::codec::{self, Time};
use crate::collections::{LEDGER_ENTRIES, WALLETS};
use crate::model::WalletDoc;
use crate::verify::{Finding, Report};
use crate::{Store, StoreError};

/// The collection of per-account checkpoints.
pub const RECONCILE_CHECKPOINTS: &str = "reconcile_checkpoints";
/// Accounts read (and their checkpoints looked up) per round trip.
const ACCOUNTS_PER_PAGE: usize = 500;
/// Changed accounts whose entries are read at once.
const ACCOUNTS_IN_FLIGHT: usize = 8;
/// Transactions whose postings are summed per aggregation.
const TRANSACTIONS_PER_CHECK: usize = 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointDoc {
    /// The account id.
    #[serde(rename = "_id")]
    id: String,
    /// The account's `version` when it was verified.
    seq: i64,
    #[serde(with = "codec::signed")]
    available: SignedAmount,
    #[serde(with = "codec::signed")]
    pending: SignedAmount,
    #[serde(with = "codec::signed")]
    held: SignedAmount,
    #[serde(with = "codec::time")]
    verified_at: Time,
}

impl CheckpointDoc {
    fn of(wallet: &WalletDoc) -> Self {
        CheckpointDoc {
            id: wallet.id.clone(),
            seq: wallet.version,
            available: wallet.available,
            pending: wallet.pending,
            held: wallet.held,
            verified_at: codec::now(),
        }
    }

    fn bucket(&self, bucket: Bucket) -> SignedAmount {
        match bucket {
            Bucket::Available => self.available,
            Bucket::Pending => self.pending,
            Bucket::Held => self.held,
        }
    }
}

/// What an incremental pass read: how much changed since the checkpoints.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IncrementalStats {
    pub accounts_read: u64,
    pub accounts_changed: u64,
    pub entries_read: u64,
    pub transactions_checked: u64,
}

/// One changed account's verdict.
struct AccountCheck {
    findings: Vec<Finding>,
    entries: u64,
    transactions: BTreeSet<String>,
    /// The account's sums per bucket (in `Bucket::ALL` order) from the checkpoint and its entries,
    /// when every entry up to its version was read.
    ledger: Option<[SignedAmount; 3]>,
}

/// What the pages of one incremental pass add up.
struct Totals<'a> {
    report: &'a mut Report,
    stats: &'a mut IncrementalStats,
    transactions: &'a mut BTreeSet<String>,
    asset_sums: &'a mut BTreeMap<String, SignedAmount>,
}

fn add_to(sums: &mut BTreeMap<String, SignedAmount>, asset: &str, buckets: [SignedAmount; 3]) {
    let sum = sums.entry(asset.to_string()).or_insert(SignedAmount::ZERO);
    for value in buckets {
        *sum = add(*sum, value).unwrap_or(*sum);
    }
}

fn add(a: SignedAmount, b: SignedAmount) -> Option<SignedAmount> {
    a.plus(&BalanceDelta {
        amount: b.magnitude,
        negative: b.negative,
    })
}

impl Store {
    /// Whether any checkpoint exists (none: the next run must be a full pass).
    pub async fn has_reconcile_checkpoints(&self) -> Result<bool, StoreError> {
        Ok(self
            .collection::<Document>(RECONCILE_CHECKPOINTS)
            .find_one(doc! {})
            .await?
            .is_some())
    }

    /// Rewrites the checkpoints of `wallets` (accounts a full pass found in agreement).
    pub(crate) async fn write_checkpoints(&self, wallets: &[WalletDoc]) -> Result<(), StoreError> {
        let checkpoints: Vec<CheckpointDoc> = wallets.iter().map(CheckpointDoc::of).collect();
        futures::stream::iter(checkpoints)
            .map(|checkpoint| self.put_checkpoint(checkpoint))
            .buffer_unordered(ACCOUNTS_IN_FLIGHT)
            .try_collect::<()>()
            .await
    }

    async fn put_checkpoint(&self, checkpoint: CheckpointDoc) -> Result<(), StoreError> {
        self.collection::<CheckpointDoc>(RECONCILE_CHECKPOINTS)
            .replace_one(doc! { "_id": &checkpoint.id }, &checkpoint)
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Verifies every account from its checkpoint on (module docs) and moves the checkpoints of
    /// the accounts that agree. Findings use the full pass's kinds, plus `SequenceGap`.
    pub async fn verify_ledger_incremental(&self) -> Result<(Report, IncrementalStats), StoreError> {
        let mut report = Report::default();
        let mut stats = IncrementalStats::default();
        let mut asset_sums: BTreeMap<String, SignedAmount> = BTreeMap::new();
        let mut transactions = BTreeSet::new();
        let mut cursor = self
            .collection::<WalletDoc>(WALLETS)
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await?;
        let mut page = Vec::with_capacity(ACCOUNTS_PER_PAGE);
        loop {
            let next = cursor.try_next().await?;
            let end = next.is_none();
            if let Some(wallet) = next {
                page.push(wallet);
            }
            if page.len() == ACCOUNTS_PER_PAGE || (end && !page.is_empty()) {
                stats.accounts_read += page.len() as u64;
                let totals = Totals {
                    report: &mut report,
                    stats: &mut stats,
                    transactions: &mut transactions,
                    asset_sums: &mut asset_sums,
                };
                self.verify_page(std::mem::take(&mut page), totals).await?;
            }
            if end {
                break;
            }
        }
        stats.transactions_checked = transactions.len() as u64;
        let transactions: Vec<String> = transactions.into_iter().collect();
        for chunk in transactions.chunks(TRANSACTIONS_PER_CHECK) {
            report.findings.extend(self.unbalanced_transactions(chunk).await?);
        }
        for (asset, sum) in asset_sums {
            if !sum.magnitude.is_zero() {
                report.findings.push(Finding::UnbalancedAsset {
                    asset,
                    sum: sum.to_string(),
                });
            }
        }
        Ok((report, stats))
    }

    /// One page of accounts: unchanged ones compared with their checkpoint, changed ones read
    /// from it on; the checkpoints of those that agree are moved.
    async fn verify_page(&self, page: Vec<WalletDoc>, totals: Totals<'_>) -> Result<(), StoreError> {
        let Totals {
            report,
            stats,
            transactions,
            asset_sums,
        } = totals;
        let ids: Vec<&str> = page.iter().map(|w| w.id.as_str()).collect();
        let checkpoints: BTreeMap<String, CheckpointDoc> = self
            .collection::<CheckpointDoc>(RECONCILE_CHECKPOINTS)
            .find(doc! { "_id": { "$in": ids } })
            .await?
            .map_ok(|c| (c.id.clone(), c))
            .try_collect()
            .await?;
        report.accounts_checked += page.len() as u64;
        let mut changed: Vec<(WalletDoc, Option<CheckpointDoc>)> = Vec::new();
        for wallet in page {
            match checkpoints.get(&wallet.id) {
                // Unchanged since verified: its ledger side is its cached balances.
                Some(c) if c.seq == wallet.version && agrees(c, &wallet) => {
                    add_to(asset_sums, &wallet.asset, Bucket::ALL.map(|b| wallet.bucket(b)));
                }
                checkpoint => {
                    let checkpoint = checkpoint.cloned();
                    changed.push((wallet, checkpoint));
                }
            }
        }
        stats.accounts_changed += changed.len() as u64;
        let checks: Vec<(WalletDoc, AccountCheck)> = futures::stream::iter(changed)
            .map(|(wallet, checkpoint)| async move {
                let check = self.verify_account(&wallet, checkpoint.as_ref()).await?;
                Ok::<_, StoreError>((wallet, check))
            })
            .buffer_unordered(ACCOUNTS_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut agreed = Vec::new();
        for (wallet, check) in checks {
            // An asset sums to zero over its entries: the ledger's side of each account, as far
            // as it was read (the cached balances where a gap stopped the reading).
            let sums = check
                .ledger
                .unwrap_or_else(|| Bucket::ALL.map(|b| wallet.bucket(b)));
            add_to(asset_sums, &wallet.asset, sums);
            stats.entries_read += check.entries;
            transactions.extend(check.transactions);
            if check.findings.is_empty() {
                agreed.push(wallet);
            } else {
                report.findings.extend(check.findings);
            }
        }
        self.write_checkpoints(&agreed).await
    }

    /// The entries of `wallet` after its checkpoint (or all, without one), checked for
    /// contiguity and summed onto the checkpoint.
    async fn verify_account(
        &self,
        wallet: &WalletDoc,
        checkpoint: Option<&CheckpointDoc>,
    ) -> Result<AccountCheck, StoreError> {
        let from_seq = checkpoint.map_or(0, |c| c.seq);
        let mut sums: BTreeMap<Bucket, SignedAmount> = Bucket::ALL
            .into_iter()
            .map(|b| (b, checkpoint.map_or(SignedAmount::ZERO, |c| c.bucket(b))))
            .collect();
        let mut check = AccountCheck {
            findings: Vec::new(),
            entries: 0,
            transactions: BTreeSet::new(),
            ledger: None,
        };
        if wallet.version < from_seq {
            check.findings.push(Finding::SequenceGap {
                account_id: wallet.id.clone(),
                detail: format!("version {} is behind its checkpoint {from_seq}", wallet.version),
            });
            return Ok(check);
        }
        let mut cursor = self
            .collection::<Document>(LEDGER_ENTRIES)
            .find(doc! { "account_id": &wallet.id, "seq": { "$gt": from_seq, "$lte": wallet.version } })
            .sort(doc! { "seq": 1 })
            .projection(doc! { "seq": 1, "bucket": 1, "amount": 1, "transaction_id": 1 })
            .await?;
        let mut expected = from_seq + 1;
        while let Some(entry) = cursor.try_next().await? {
            let seq = match entry.get("seq") {
                Some(mongodb::bson::Bson::Int64(n)) => *n,
                Some(mongodb::bson::Bson::Int32(n)) => i64::from(*n),
                _ => -1,
            };
            if seq != expected {
                check.findings.push(gap(
                    wallet,
                    format!("entry seq {seq} where {expected} was expected"),
                ));
                return Ok(check);
            }
            expected += 1;
            check.entries += 1;
            let bucket = entry_bucket(&entry)?;
            let amount = entry_amount(&entry)?;
            let sum = sums.get_mut(&bucket).expect("every bucket");
            *sum = add(*sum, amount)
                .ok_or_else(|| StoreError::Corrupt("a sum leaves the ledger limit".into()))?;
            if let Ok(tx) = entry.get_str("transaction_id") {
                check.transactions.insert(tx.to_string());
            }
        }
        if expected != wallet.version + 1 {
            let detail = format!(
                "entries up to seq {} where the account is at version {}",
                expected - 1,
                wallet.version
            );
            check.findings.push(gap(wallet, detail));
            return Ok(check);
        }
        check.ledger = Some(Bucket::ALL.map(|b| sums[&b]));
        for bucket in Bucket::ALL {
            let (cached, ledger) = (wallet.bucket(bucket), sums[&bucket]);
            if cached != ledger {
                check.findings.push(Finding::BalanceMismatch {
                    account_id: wallet.id.clone(),
                    bucket: bucket.as_str().to_string(),
                    cached: cached.to_string(),
                    ledger: ledger.to_string(),
                });
            }
        }
        Ok(check)
    }

    async fn unbalanced_transactions(&self, ids: &[String]) -> Result<Vec<Finding>, StoreError> {
        let pipeline = vec![
            doc! { "$match": { "transaction_id": { "$in": ids } } },
            doc! { "$group": { "_id": "$transaction_id", "sum": { "$sum": "$amount" } } },
            doc! { "$match": { "sum": { "$ne": codec::zero() } } },
        ];
        let mut cursor = self
            .collection::<Document>(LEDGER_ENTRIES)
            .aggregate(pipeline)
            .await?;
        let mut found = Vec::new();
        while let Some(row) = cursor.try_next().await? {
            found.push(Finding::UnbalancedTransaction {
                transaction_id: row.get_str("_id").unwrap_or_default().to_string(),
                sum: signed_text(row.get("sum"))?,
            });
        }
        Ok(found)
    }
}

fn agrees(checkpoint: &CheckpointDoc, wallet: &WalletDoc) -> bool {
    Bucket::ALL
        .into_iter()
        .all(|b| checkpoint.bucket(b) == wallet.bucket(b))
}

fn gap(wallet: &WalletDoc, detail: String) -> Finding {
    Finding::SequenceGap {
        account_id: wallet.id.clone(),
        detail,
    }
}

fn entry_bucket(entry: &Document) -> Result<Bucket, StoreError> {
    let name = entry.get_str("bucket").unwrap_or_default();
    Bucket::ALL
        .into_iter()
        .find(|b| b.as_str() == name)
        .ok_or_else(|| StoreError::Corrupt(format!("an entry's bucket {name:?}")))
}

fn entry_amount(entry: &Document) -> Result<SignedAmount, StoreError> {
    match entry.get("amount") {
        Some(mongodb::bson::Bson::Decimal128(d)) => {
            let (magnitude, negative) = codec::from_decimal(d)?;
            Ok(SignedAmount::new(magnitude, negative))
        }
        other => Err(StoreError::Corrupt(format!(
            "an entry's amount is not a Decimal128: {other:?}"
        ))),
    }
}

fn signed_text(value: Option<&mongodb::bson::Bson>) -> Result<String, StoreError> {
    match value {
        Some(mongodb::bson::Bson::Decimal128(d)) => {
            let (magnitude, negative) = codec::from_decimal(d)?;
            Ok(SignedAmount::new(magnitude, negative).to_string())
        }
        other => Err(StoreError::Corrupt(format!(
            "a sum is not a Decimal128: {other:?}"
        ))),
    }
}
