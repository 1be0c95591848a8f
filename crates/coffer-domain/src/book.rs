//! Running balances of the accounts a batch of movements touches, and the rule that applies the
//! movements one by one, in order, against them (group commit, BRIEF B1).
//!
//! The store reads (or already knows) every touched account's cached balances, builds a [`Book`],
//! and asks it to apply each movement in turn. A movement that would take a user's bucket below
//! zero, any balance past the ledger limit, or a limited counter past its limit is refused alone
//! and leaves the book as it was; the others see the balances as the movements before them left
//! them. Applying a batch this way gives exactly the balances and outcomes of applying its
//! movements one per database transaction in the same order (a property test below).

use std::collections::BTreeMap;

use crate::account::{AccountKind, Bucket};
use crate::amount::{ledger_max, Amount};
use crate::ledger::BalanceDelta;
use crate::movement::Movement;

/// A balance that may be negative (platform accounts are), bounded by the ledger limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SignedAmount {
    pub magnitude: Amount,
    /// Never true for a zero magnitude.
    pub negative: bool,
}

impl SignedAmount {
    pub const ZERO: SignedAmount = SignedAmount {
        magnitude: Amount::ZERO,
        negative: false,
    };

    pub fn new(magnitude: Amount, negative: bool) -> Self {
        SignedAmount {
            magnitude,
            negative: negative && !magnitude.is_zero(),
        }
    }

    /// `self + delta`, or None when the result leaves [-ledger_max, ledger_max].
    pub fn plus(self, delta: &BalanceDelta) -> Option<SignedAmount> {
        let result = sum(self, SignedAmount::new(delta.amount, delta.negative));
        (result.magnitude <= ledger_max()).then_some(result)
    }

    /// The delta that takes `from` to `self` (at most twice the ledger limit: still exact).
    pub fn minus(self, from: SignedAmount) -> BalanceDelta {
        let difference = sum(self, SignedAmount::new(from.magnitude, !from.negative));
        BalanceDelta {
            amount: difference.magnitude,
            negative: difference.negative,
        }
    }
}

impl std::fmt::Display for SignedAmount {
    /// Smallest units, with a `-` when negative: `-2500000000000000000`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.negative {
            write!(f, "-{}", self.magnitude)
        } else {
            write!(f, "{}", self.magnitude)
        }
    }
}

/// `a + b` of two values within the ledger limit (so the magnitudes cannot overflow 256 bits).
fn sum(a: SignedAmount, b: SignedAmount) -> SignedAmount {
    if a.negative == b.negative {
        SignedAmount::new(a.magnitude.checked_add(b.magnitude).expect("bounded"), a.negative)
    } else if a.magnitude >= b.magnitude {
        SignedAmount::new(a.magnitude.checked_sub(b.magnitude).expect("ordered"), a.negative)
    } else {
        SignedAmount::new(b.magnitude.checked_sub(a.magnitude).expect("ordered"), b.negative)
    }
}

/// One account's cached balances, as the store read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountBalances {
    pub kind: AccountKind,
    /// The owner of a user wallet.
    pub user_id: Option<String>,
    pub asset: String,
    pub available: SignedAmount,
    pub pending: SignedAmount,
    pub held: SignedAmount,
}

impl AccountBalances {
    pub fn bucket(&self, bucket: Bucket) -> SignedAmount {
        match bucket {
            Bucket::Available => self.available,
            Bucket::Pending => self.pending,
            Bucket::Held => self.held,
        }
    }

    fn bucket_mut(&mut self, bucket: Bucket) -> &mut SignedAmount {
        match bucket {
            Bucket::Available => &mut self.available,
            Bucket::Pending => &mut self.pending,
            Bucket::Held => &mut self.held,
        }
    }
}

/// Why a movement of a batch was refused by the book. Nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookRefusal {
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("the credit would take the balance above the ledger limit")]
    BalanceLimit,
    #[error("account {0} does not exist")]
    UnknownAccount(String),
    #[error("the movement would exceed its limit {0}")]
    LimitExceeded(String),
    #[error("account {0} belongs to another asset")]
    AssetMismatch(String),
    #[error("the movement's participants differ from the owners of the wallets it touches")]
    Participants,
}

/// What a movement did to the book: the touched user wallets' balances right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// (account id, balances after this movement), user wallets whose balances changed, in the
    /// order of the ledger's deltas.
    pub user_balances: Vec<(String, AccountBalances)>,
}

/// The running state of a batch: accounts and limit counters, changed movement by movement.
#[derive(Debug, Clone, Default)]
pub struct Book {
    accounts: BTreeMap<String, AccountBalances>,
    /// Limit counters (e.g. a wallet's withdrawals today) by key: the amount used so far.
    counters: BTreeMap<String, Amount>,
}

impl Book {
    pub fn new() -> Book {
        Book::default()
    }

    pub fn insert_account(&mut self, id: impl Into<String>, balances: AccountBalances) {
        self.accounts.insert(id.into(), balances);
    }

    /// Sets a limit counter's current total (absent counters start at zero).
    pub fn insert_counter(&mut self, key: impl Into<String>, used: Amount) {
        self.counters.insert(key.into(), used);
    }

    pub fn account(&self, id: &str) -> Option<&AccountBalances> {
        self.accounts.get(id)
    }

    pub fn counter(&self, key: &str) -> Amount {
        self.counters.get(key).copied().unwrap_or(Amount::ZERO)
    }

    /// Applies `movement` if every balance and limit allows it; otherwise changes nothing.
    pub fn apply(&mut self, movement: &Movement) -> Result<Applied, BookRefusal> {
        let ledger = &movement.ledger;
        let mut changed: BTreeMap<String, AccountBalances> = BTreeMap::new();
        for (account_id, bucket, delta) in ledger.balance_deltas() {
            let current = match changed.get(&account_id) {
                Some(balances) => balances.clone(),
                None => self
                    .accounts
                    .get(&account_id)
                    .cloned()
                    .ok_or_else(|| BookRefusal::UnknownAccount(account_id.clone()))?,
            };
            if current.asset != ledger.asset() {
                return Err(BookRefusal::AssetMismatch(account_id));
            }
            let mut next = current;
            let value = next
                .bucket(bucket)
                .plus(&delta)
                .ok_or(BookRefusal::BalanceLimit)?;
            if value.negative && next.kind.must_stay_non_negative() {
                return Err(if delta.negative {
                    BookRefusal::InsufficientFunds
                } else {
                    BookRefusal::BalanceLimit
                });
            }
            *next.bucket_mut(bucket) = value;
            changed.insert(account_id, next);
        }
        let mut owners: Vec<&str> = changed.values().filter_map(|a| a.user_id.as_deref()).collect();
        owners.sort_unstable();
        owners.dedup();
        if owners
            != movement
                .participants
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        {
            return Err(BookRefusal::Participants);
        }
        let mut counters = Vec::new();
        for charge in &movement.limits {
            let used = self.counter(&charge.key);
            let total = used.checked_add(charge.amount).filter(|t| *t <= charge.limit);
            counters.push((
                charge.key.clone(),
                total.ok_or_else(|| BookRefusal::LimitExceeded(charge.key.clone()))?,
            ));
        }
        self.counters.extend(counters);
        let mut user_balances = Vec::new();
        for (account_id, _, _) in ledger.balance_deltas() {
            let Some(balances) = changed.get(&account_id) else {
                continue;
            };
            if balances.kind == AccountKind::User && !user_balances.iter().any(|(id, _)| id == &account_id) {
                user_balances.push((account_id.clone(), balances.clone()));
            }
        }
        self.accounts.extend(changed);
        Ok(Applied { user_balances })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::platform_account_id;
    use crate::ledger::LedgerTransaction;
    use crate::movement::{LimitCharge, Movement};
    use proptest::prelude::*;

    fn user(id: &str, available: u64) -> AccountBalances {
        AccountBalances {
            kind: AccountKind::User,
            user_id: Some(format!("u-{id}")),
            asset: "ETH".into(),
            available: SignedAmount::new(Amount::from_u64(available), false),
            pending: SignedAmount::ZERO,
            held: SignedAmount::ZERO,
        }
    }

    fn transfer(from: &str, to: &str, amount: u64) -> Movement {
        let ledger = LedgerTransaction::transfer("ETH", from, to, Amount::from_u64(amount)).unwrap();
        Movement::for_test(ledger, &[&format!("u-{from}"), &format!("u-{to}")])
    }

    fn book(balances: &[(&str, u64)]) -> Book {
        let mut book = Book::new();
        for (id, available) in balances {
            book.insert_account(*id, user(id, *available));
        }
        book
    }

    fn available(book: &Book, id: &str) -> u64 {
        let a = book.account(id).unwrap().available;
        assert!(!a.negative);
        u64::try_from(a.magnitude.atomic()).unwrap()
    }

    #[test]
    fn an_overdrawing_movement_fails_alone_and_the_next_sees_the_balance_before_it() {
        let mut book = book(&[("a", 10), ("b", 0), ("c", 0)]);
        assert!(book.apply(&transfer("a", "b", 7)).is_ok());
        assert_eq!(
            book.apply(&transfer("a", "c", 4)),
            Err(BookRefusal::InsufficientFunds)
        );
        assert!(book.apply(&transfer("a", "c", 3)).is_ok());
        assert_eq!(
            (
                available(&book, "a"),
                available(&book, "b"),
                available(&book, "c")
            ),
            (0, 7, 3)
        );
    }

    #[test]
    fn applied_reports_each_user_wallet_after_the_movement() {
        let mut book = book(&[("a", 10), ("b", 1)]);
        let applied = book.apply(&transfer("a", "b", 4)).unwrap();
        let after: Vec<(String, u64)> = applied
            .user_balances
            .iter()
            .map(|(id, b)| (id.clone(), u64::try_from(b.available.magnitude.atomic()).unwrap()))
            .collect();
        assert_eq!(after, vec![("a".to_string(), 6), ("b".to_string(), 5)]);
    }

    #[test]
    fn platform_accounts_may_go_negative_but_not_past_the_ledger_limit() {
        let mut book = book(&[("w", 0)]);
        let custody = platform_account_id("ETH", AccountKind::Custody);
        book.insert_account(
            custody.clone(),
            AccountBalances {
                kind: AccountKind::Custody,
                user_id: None,
                ..user("x", 0)
            },
        );
        let deposit = LedgerTransaction::deposit("ETH", "w", Amount::from_u64(5)).unwrap();
        assert!(book.apply(&Movement::for_test(deposit, &["u-w"])).is_ok());
        assert_eq!(
            book.account(&custody).unwrap().available,
            SignedAmount::new(Amount::from_u64(5), true)
        );
        let huge = LedgerTransaction::deposit("ETH", "w", ledger_max()).unwrap();
        assert_eq!(
            book.apply(&Movement::for_test(huge, &["u-w"])),
            Err(BookRefusal::BalanceLimit)
        );
        assert_eq!(available(&book, "w"), 5, "the refused movement changed nothing");
    }

    #[test]
    fn a_limit_counter_refuses_the_charge_that_would_pass_it() {
        let mut book = book(&[("a", 100), ("b", 0)]);
        let charged = |amount: u64| {
            let mut m = transfer("a", "b", amount);
            m.limits.push(LimitCharge {
                key: "a:2026-12-01".into(),
                amount: Amount::from_u64(amount),
                limit: Amount::from_u64(10),
            });
            m
        };
        assert!(book.apply(&charged(6)).is_ok());
        assert_eq!(
            book.apply(&charged(5)),
            Err(BookRefusal::LimitExceeded("a:2026-12-01".into()))
        );
        assert!(book.apply(&charged(4)).is_ok());
        assert_eq!(book.counter("a:2026-12-01"), Amount::from_u64(10));
        assert_eq!(available(&book, "a"), 90);
    }

    #[test]
    fn unknown_accounts_other_assets_and_wrong_participants_are_refused() {
        let mut book = book(&[("a", 10)]);
        assert_eq!(
            book.apply(&transfer("a", "nobody", 1)),
            Err(BookRefusal::UnknownAccount("nobody".into()))
        );
        let mut usdt = user("t", 0);
        usdt.asset = "USDT".into();
        book.insert_account("t", usdt);
        assert_eq!(
            book.apply(&transfer("a", "t", 1)),
            Err(BookRefusal::AssetMismatch("t".into()))
        );
        book.insert_account("b", user("b", 0));
        let mut forged = transfer("a", "b", 1);
        forged.participants = vec!["u-a".into()];
        assert_eq!(book.apply(&forged), Err(BookRefusal::Participants));
        assert_eq!(available(&book, "a"), 10);
    }

    proptest! {
        /// Any sequence of transfers among a few wallets applied to one book (one batch) ends
        /// with the outcomes and balances of a plain integer model that applies them one at a
        /// time: refused exactly when the source cannot cover it; no balance ever negative.
        #[test]
        fn a_batch_equals_its_movements_one_by_one(
            start in proptest::collection::vec(0u64..50, 4),
            moves in proptest::collection::vec((0usize..4, 0usize..4, 1u64..40), 1..60),
        ) {
            let ids = ["a", "b", "c", "d"];
            let initial: Vec<(&str, u64)> = ids.iter().copied().zip(start.iter().copied()).collect();
            let mut batch = book(&initial);
            let mut cash: Vec<u64> = start.clone();
            for (from, to, amount) in moves {
                if from == to { continue; }
                let applied = batch.apply(&transfer(ids[from], ids[to], amount)).is_ok();
                prop_assert_eq!(applied, cash[from] >= amount);
                if applied { cash[from] -= amount; cash[to] += amount; }
            }
            for (i, id) in ids.iter().enumerate() {
                prop_assert_eq!(available(&batch, id), cash[i]);
            }
        }

        #[test]
        fn signed_addition_matches_i128(a in -1_000_000i128..1_000_000, d in -1_000_000i128..1_000_000) {
            let signed = |v: i128| SignedAmount::new(Amount::from_u128(v.unsigned_abs()), v < 0);
            let delta = BalanceDelta { amount: Amount::from_u128(d.unsigned_abs()), negative: d < 0 };
            prop_assert_eq!(signed(a).plus(&delta), Some(signed(a + d)));
            let back = signed(a + d).minus(signed(a));
            prop_assert_eq!(back.amount, delta.amount);
            prop_assert_eq!(back.negative, d < 0);
        }
    }
}
