//! An account's history (L9): every ledger entry carries the account's sequence number and its
//! balances right after it, so the balance at any past instant is the balances of the last entry
//! posted by then, and a statement is a contiguous run of sequence numbers whose opening balances
//! plus its entries give its closing balances.

use crate::account::Bucket;
use crate::book::SignedAmount;
use crate::ledger::BalanceDelta;

/// An account's three buckets at one point of its history, credit-positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketBalances {
    pub available: SignedAmount,
    pub pending: SignedAmount,
    pub held: SignedAmount,
}

impl From<&crate::book::AccountBalances> for BucketBalances {
    fn from(account: &crate::book::AccountBalances) -> Self {
        BucketBalances {
            available: account.available,
            pending: account.pending,
            held: account.held,
        }
    }
}

impl BucketBalances {
    pub fn bucket(&self, bucket: Bucket) -> SignedAmount {
        match bucket {
            Bucket::Available => self.available,
            Bucket::Pending => self.pending,
            Bucket::Held => self.held,
        }
    }

    /// The balances after `amount` is posted to `bucket`; None past the ledger limit.
    pub fn posted(&self, bucket: Bucket, amount: SignedAmount) -> Option<BucketBalances> {
        let delta = BalanceDelta {
            amount: amount.magnitude,
            negative: amount.negative,
        };
        let mut after = *self;
        let slot = match bucket {
            Bucket::Available => &mut after.available,
            Bucket::Pending => &mut after.pending,
            Bucket::Held => &mut after.held,
        };
        *slot = slot.plus(&delta)?;
        Some(after)
    }

    /// available + pending + held; None past the ledger limit.
    pub fn total(&self) -> Option<SignedAmount> {
        let as_delta = |a: SignedAmount| BalanceDelta {
            amount: a.magnitude,
            negative: a.negative,
        };
        self.available
            .plus(&as_delta(self.pending))?
            .plus(&as_delta(self.held))
    }

    /// The balances before `amount` was posted to `bucket` (the inverse of [`Self::posted`]).
    pub fn unposted(&self, bucket: Bucket, amount: SignedAmount) -> Option<BucketBalances> {
        self.posted(bucket, SignedAmount::new(amount.magnitude, !amount.negative))
    }
}

/// Where an account's history stands: the sequence number of its last entry (0 before any) and
/// its balances after it. The account's `version` is this sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub seq: i64,
    pub balances: BucketBalances,
}

impl Position {
    /// Posts one entry: the next sequence number and the balances after it.
    pub fn post(&mut self, bucket: Bucket, amount: SignedAmount) -> Option<Position> {
        self.balances = self.balances.posted(bucket, amount)?;
        self.seq += 1;
        Some(*self)
    }

    /// The position before `entries` (bucket, amount) of this account were posted, in order, to
    /// reach `self`: how a writer that learns the balances after its update numbers its entries.
    pub fn before(&self, entries: &[(Bucket, SignedAmount)]) -> Option<Position> {
        let mut balances = self.balances;
        for (bucket, amount) in entries.iter().rev() {
            balances = balances.unposted(*bucket, *amount)?;
        }
        let count = i64::try_from(entries.len()).ok()?;
        Some(Position {
            seq: self.seq.checked_sub(count)?,
            balances,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Amount;

    fn signed(value: u64, negative: bool) -> SignedAmount {
        SignedAmount::new(Amount::from_u64(value), negative)
    }

    #[test]
    fn posting_numbers_entries_and_before_undoes_them() {
        let start = Position {
            seq: 7,
            balances: BucketBalances {
                available: signed(10, false),
                ..Default::default()
            },
        };
        let entries = [
            (Bucket::Available, signed(4, true)),
            (Bucket::Held, signed(4, false)),
            (Bucket::Available, signed(2, false)),
        ];
        let mut running = start;
        let after: Vec<Position> = entries
            .iter()
            .map(|(b, a)| running.post(*b, *a).unwrap())
            .collect();
        assert_eq!(after.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![8, 9, 10]);
        assert_eq!(after[0].balances.available, signed(6, false));
        assert_eq!(after[2].balances.available, signed(8, false));
        assert_eq!(after[2].balances.held, signed(4, false));
        assert_eq!(running.before(&entries), Some(start));
    }

    #[test]
    fn a_platform_account_goes_negative() {
        let mut custody = Position::default();
        let after = custody.post(Bucket::Available, signed(5, true)).unwrap();
        assert_eq!(after.balances.available, signed(5, true));
        assert_eq!(after.seq, 1);
    }
}
