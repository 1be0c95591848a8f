//! An account's history (L9): its balances at a past instant and its entries between two, each a
//! bounded read on an index (never a scan of the account's entries).
//!
//! Every entry carries its account's sequence number (`seq`) and the balances right after it
//! (`balance_after_atomic`), written in the transaction that posts it. The balance at an instant
//! is the last entry posted by then (index `by_account_time`); a statement is the run of sequence
//! numbers between its two instants (index `by_account_seq`), so its opening balances plus its
//! entries are its closing balances by construction.
//!
//! Entries written before this existed carry neither: an answer that would need one of them is
//! [`StoreError::HistoryUnavailable`], never a guess (docs/api.md, "Statements").

use coffer_domain::history::{BucketBalances, Position};
use futures::TryStreamExt;
use mongodb::bson::doc;

use crate::codec::{self, Time};
use crate::collections::LEDGER_ENTRIES;
use crate::model::LedgerEntryDoc;
use crate::{Store, StoreError};

/// Where a search for an instant ended.
enum Found {
    At(Position),
    /// Before the account's first numbered entry, which has older entries without numbers.
    AmongUnnumbered,
}

/// Index name of (account, seq).
pub const BY_ACCOUNT_SEQ: &str = "by_account_seq";
/// Index name of (account, time, seq).
pub const BY_ACCOUNT_TIME: &str = "by_account_time";

/// Most entries one read of a statement returns (a CSV statement's row cap).
pub const STATEMENT_ENTRIES_MAX: u32 = 10_000;

impl Store {
    /// The account's balances as of `at`: after every entry posted at or before it (zero when
    /// none was). At most 2 + log2(entries) point reads.
    pub async fn balances_at(&self, account_id: &str, at: Time) -> Result<BucketBalances, StoreError> {
        match self.search(account_id, at).await? {
            Found::At(position) => Ok(position.balances),
            Found::AmongUnnumbered => match self.has_unnumbered_entry_by(account_id, at).await? {
                false => Ok(BucketBalances::default()),
                true => Err(StoreError::HistoryUnavailable),
            },
        }
    }

    /// The account's position at `at`: the sequence number and balances after every entry
    /// posted at or before `at` (0 and zero balances when none was). At most 2 + log2(entries)
    /// point reads. A statement cannot start among entries without numbers (they would be
    /// missing from its range): `HistoryUnavailable`.
    pub async fn position_at(&self, account_id: &str, at: Time) -> Result<Position, StoreError> {
        match self.search(account_id, at).await? {
            Found::At(position) => Ok(position),
            Found::AmongUnnumbered => Err(StoreError::HistoryUnavailable),
        }
    }

    /// A binary search on `seq` (time and `seq` order agree within an account): each step one
    /// point read `{account_id, seq}` on `by_account_seq`, so the cost is logarithmic in the
    /// history's length. (SecantusDB answers "the last entry by then" on `by_account_time` by
    /// reading the index range up to then and sorting it: seconds at 100,000 entries, measured.)
    async fn search(&self, account_id: &str, at: Time) -> Result<Found, StoreError> {
        let wallet = self.wallet_by_id(account_id).await?.ok_or(StoreError::NotFound)?;
        // Invariant: entries numbered <= low are at or before `at` (a number with no entry was
        // given before entries carried one, to older entries); those numbered > high are after.
        let (mut low, mut high) = (0i64, wallet.version);
        let mut found: Option<LedgerEntryDoc> = None;
        while low < high {
            let middle = low + (high - low + 1) / 2;
            match self.entry_of_seq(account_id, middle).await? {
                Some(entry) if entry.created_at > at => high = middle - 1,
                entry => {
                    low = middle;
                    found = entry;
                }
            }
        }
        if low == 0 {
            return Ok(Found::At(Position::default()));
        }
        let entry = match found.filter(|e| e.seq == Some(low)) {
            Some(entry) => Some(entry),
            None => self.entry_of_seq(account_id, low).await?,
        };
        match entry {
            Some(entry) => entry
                .position()
                .map(Found::At)
                .ok_or(StoreError::HistoryUnavailable),
            None => Ok(Found::AmongUnnumbered),
        }
    }

    async fn entry_of_seq(&self, account_id: &str, seq: i64) -> Result<Option<LedgerEntryDoc>, StoreError> {
        Ok(self
            .collection::<LedgerEntryDoc>(LEDGER_ENTRIES)
            .find_one(doc! { "account_id": account_id, "seq": seq })
            .await?)
    }

    /// Whether the account has an entry without a number posted at or before `at` (index
    /// `by_account_time`; only asked of accounts with such entries).
    async fn has_unnumbered_entry_by(&self, account_id: &str, at: Time) -> Result<bool, StoreError> {
        // "At or before" as "before the next millisecond" (entries are dated to the millisecond):
        // SecantusDB's index bounds drop the endpoint of `$lte` on a key after the first.
        let next_millisecond = codec::bson_time(&codec::from_millis(at.timestamp_millis() + 1));
        let filter = doc! { "account_id": account_id, "created_at": { "$lt": next_millisecond } };
        let found = self
            .collection::<LedgerEntryDoc>(LEDGER_ENTRIES)
            .find_one(filter)
            .await?;
        Ok(found.is_some())
    }

    /// The account's position right after its entry `seq` (zero balances when it has no entry
    /// of that number: a statement's start before the account's first entry). One indexed read.
    pub async fn position_of_seq(&self, account_id: &str, seq: i64) -> Result<Position, StoreError> {
        let entry = self
            .collection::<LedgerEntryDoc>(LEDGER_ENTRIES)
            .find_one(doc! { "account_id": account_id, "seq": seq })
            .await?;
        match entry {
            Some(entry) => entry.position().ok_or(StoreError::HistoryUnavailable),
            None => Ok(Position {
                seq,
                ..Position::default()
            }),
        }
    }

    /// The account's entries numbered after `after_seq` up to `until_seq`, in order, at most
    /// `limit` (capped at [`STATEMENT_ENTRIES_MAX`]). Fails if the numbers have a gap.
    pub async fn entries_between(
        &self,
        account_id: &str,
        after_seq: i64,
        until_seq: i64,
        limit: u32,
    ) -> Result<Vec<LedgerEntryDoc>, StoreError> {
        let limit = limit.clamp(1, STATEMENT_ENTRIES_MAX);
        let entries: Vec<LedgerEntryDoc> = self
            .collection::<LedgerEntryDoc>(LEDGER_ENTRIES)
            // `$lt` of the next number rather than `$lte` (see `position_at`).
            .find(doc! { "account_id": account_id, "seq": { "$gt": after_seq, "$lt": until_seq + 1 } })
            .sort(doc! { "seq": 1 })
            .limit(i64::from(limit))
            .await?
            .try_collect()
            .await?;
        for (offset, entry) in entries.iter().enumerate() {
            if entry.seq != Some(after_seq + 1 + offset as i64) {
                return Err(StoreError::Corrupt(format!(
                    "account {account_id} has a gap in its entries after seq {after_seq}"
                )));
            }
        }
        Ok(entries)
    }
}

/// Seeds a long history fast, for benchmarks (feature `testing`): appends one entry per amount to
/// the account's `available` bucket, `step_ms` apart from `start`, numbered and with running
/// balances exactly as the write path would, and moves the account's cached balance and version
/// to match. Not balanced by a counter-account: `ledger verify` would flag it, by design.
#[cfg(feature = "testing")]
pub async fn seed_history(
    store: &Store,
    wallet: &crate::model::WalletDoc,
    amounts: &[coffer_domain::SignedAmount],
    start: Time,
    step_ms: i64,
) -> Result<Position, StoreError> {
    use coffer_domain::{Bucket, Side, TxKind};
    let mut position = crate::batch::wallet_position(wallet)?;
    let collection = store.collection::<LedgerEntryDoc>(LEDGER_ENTRIES);
    for (chunk_index, chunk) in amounts.chunks(10_000).enumerate() {
        let mut entries = Vec::with_capacity(chunk.len());
        for (offset, amount) in chunk.iter().enumerate() {
            let index = (chunk_index * 10_000 + offset) as i64;
            let after = position
                .post(Bucket::Available, *amount)
                .ok_or_else(|| StoreError::Corrupt("seeded balance past the ledger limit".into()))?;
            entries.push(LedgerEntryDoc {
                id: crate::new_id(),
                transaction_id: crate::new_id(),
                account_id: wallet.id.clone(),
                user_id: wallet.user_id.clone(),
                asset: wallet.asset.clone(),
                kind: TxKind::Adjustment,
                bucket: Bucket::Available,
                side: if amount.negative {
                    Side::Debit
                } else {
                    Side::Credit
                },
                amount: *amount,
                created_at: codec::from_millis(start.timestamp_millis() + index * step_ms),
                seq: Some(after.seq),
                balance_after_atomic: Some(after.balances.into()),
            });
        }
        collection.insert_many(&entries).await?;
    }
    let available = position.balances.available;
    store
        .collection::<crate::model::WalletDoc>(crate::collections::WALLETS)
        .update_one(
            doc! { "_id": &wallet.id },
            doc! { "$set": {
                "available": codec::to_decimal(&available.magnitude, available.negative),
                "version": position.seq,
            } },
        )
        .await?;
    Ok(position)
}
