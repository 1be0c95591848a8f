//! Balanced ledger transactions. A [`LedgerTransaction`] can only be built through a constructor
//! that checks that its debits equal its credits, so an unbalanced one cannot exist.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::account::{platform_account_id, AccountKind, Bucket};
use crate::amount::{ledger_max, Amount};

/// Debit or credit. Balances are stored credit-positive: a credit adds, a debit subtracts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Debit,
    Credit,
}

impl Side {
    pub fn opposite(self) -> Side {
        match self {
            Side::Debit => Side::Credit,
            Side::Credit => Side::Debit,
        }
    }
}

/// What a transaction does, for people and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxKind {
    Deposit,
    Withdrawal,
    Transfer,
    Fee,
    Reversal,
    Adjustment,
    /// One leg of a conversion between a user's wallets of two assets (L11).
    Conversion,
    /// Money given back against a transfer or a rail deposit (L10), linked to it.
    Refund,
    /// A payment rail's chargeback of a rail deposit (L10): held, then released or reversed.
    Dispute,
}

impl TxKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TxKind::Deposit => "deposit",
            TxKind::Withdrawal => "withdrawal",
            TxKind::Transfer => "transfer",
            TxKind::Fee => "fee",
            TxKind::Reversal => "reversal",
            TxKind::Adjustment => "adjustment",
            TxKind::Conversion => "conversion",
            TxKind::Refund => "refund",
            TxKind::Dispute => "dispute",
        }
    }
}

/// One line of a ledger transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub account_id: String,
    pub bucket: Bucket,
    pub side: Side,
    pub amount: Amount,
}

impl Posting {
    pub fn debit(account_id: impl Into<String>, bucket: Bucket, amount: Amount) -> Self {
        Posting {
            account_id: account_id.into(),
            bucket,
            side: Side::Debit,
            amount,
        }
    }

    pub fn credit(account_id: impl Into<String>, bucket: Bucket, amount: Amount) -> Self {
        Posting {
            account_id: account_id.into(),
            bucket,
            side: Side::Credit,
            amount,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LedgerError {
    #[error("a ledger transaction needs at least two postings")]
    TooFewPostings,
    #[error("a posting amount must be greater than zero")]
    ZeroPosting,
    #[error("a posting amount is above the ledger's per-amount limit")]
    AboveLedgerLimit,
    #[error("debits ({debits}) and credits ({credits}) differ")]
    Unbalanced { debits: Amount, credits: Amount },
    #[error("the source and the destination are the same account")]
    SameAccount,
}

/// The net change of one (account, bucket): `negative` when debits exceed credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceDelta {
    pub amount: Amount,
    pub negative: bool,
}

/// A balanced set of postings in one asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerTransaction {
    kind: TxKind,
    asset: String,
    postings: Vec<Posting>,
}

impl LedgerTransaction {
    /// Checks the postings and builds the transaction: at least two, none zero or above the
    /// ledger limit, and debits equal to credits.
    pub fn new(kind: TxKind, asset: impl Into<String>, postings: Vec<Posting>) -> Result<Self, LedgerError> {
        if postings.len() < 2 {
            return Err(LedgerError::TooFewPostings);
        }
        let limit = ledger_max();
        let (mut debits, mut credits) = (Amount::ZERO, Amount::ZERO);
        for posting in &postings {
            if posting.amount.is_zero() {
                return Err(LedgerError::ZeroPosting);
            }
            if posting.amount > limit {
                return Err(LedgerError::AboveLedgerLimit);
            }
            let total = match posting.side {
                Side::Debit => &mut debits,
                Side::Credit => &mut credits,
            };
            // Cannot overflow: each posting is below 10^33 and a Vec holds far fewer than 10^44.
            *total = total
                .checked_add(posting.amount)
                .ok_or(LedgerError::AboveLedgerLimit)?;
        }
        if debits != credits {
            return Err(LedgerError::Unbalanced { debits, credits });
        }
        Ok(LedgerTransaction {
            kind,
            asset: asset.into(),
            postings,
        })
    }

    /// Moves `amount` from one wallet's available balance to another's.
    pub fn transfer(
        asset: &str,
        from_wallet: &str,
        to_wallet: &str,
        amount: Amount,
    ) -> Result<Self, LedgerError> {
        if from_wallet == to_wallet {
            return Err(LedgerError::SameAccount);
        }
        Self::new(
            TxKind::Transfer,
            asset,
            vec![
                Posting::debit(from_wallet, Bucket::Available, amount),
                Posting::credit(to_wallet, Bucket::Available, amount),
            ],
        )
    }

    /// Credits a wallet against the asset's custody account (funds arrived in custody).
    pub fn deposit(asset: &str, wallet: &str, amount: Amount) -> Result<Self, LedgerError> {
        Self::new(
            TxKind::Deposit,
            asset,
            vec![
                Posting::debit(
                    platform_account_id(asset, AccountKind::Custody),
                    Bucket::Available,
                    amount,
                ),
                Posting::credit(wallet, Bucket::Available, amount),
            ],
        )
    }

    /// Reserves `amount` of a wallet for a withdrawal: available to held, within the wallet.
    /// A transfer held for review: the sender's available to held.
    pub fn transfer_hold(asset: &str, wallet: &str, amount: Amount) -> Result<Self, LedgerError> {
        Self::new(
            TxKind::Transfer,
            asset,
            vec![
                Posting::debit(wallet, Bucket::Available, amount),
                Posting::credit(wallet, Bucket::Held, amount),
            ],
        )
    }

    /// A held transfer approved: the sender's held to the recipient's available.
    pub fn transfer_release(
        asset: &str,
        from_wallet: &str,
        to_wallet: &str,
        amount: Amount,
    ) -> Result<Self, LedgerError> {
        if from_wallet == to_wallet {
            return Err(LedgerError::SameAccount);
        }
        Self::new(
            TxKind::Transfer,
            asset,
            vec![
                Posting::debit(from_wallet, Bucket::Held, amount),
                Posting::credit(to_wallet, Bucket::Available, amount),
            ],
        )
    }

    pub fn withdrawal_hold(asset: &str, wallet: &str, amount: Amount) -> Result<Self, LedgerError> {
        Self::new(
            TxKind::Withdrawal,
            asset,
            vec![
                Posting::debit(wallet, Bucket::Available, amount),
                Posting::credit(wallet, Bucket::Held, amount),
            ],
        )
    }

    /// Settles a withdrawal that reached its confirmation threshold: the held amount leaves the
    /// wallet and the asset's custody account (what the platform holds on chain) goes down by it.
    /// A network fee paid in this same asset (a native-coin withdrawal's gas) is the platform's
    /// cost: custody goes down by it too, against the fees account.
    pub fn withdrawal_settlement(
        asset: &str,
        wallet: &str,
        amount: Amount,
        network_fee: Option<Amount>,
    ) -> Result<Self, LedgerError> {
        let custody = platform_account_id(asset, AccountKind::Custody);
        let mut postings = vec![
            Posting::debit(wallet, Bucket::Held, amount),
            Posting::credit(&custody, Bucket::Available, amount),
        ];
        if let Some(fee) = network_fee.filter(|f| !f.is_zero()) {
            postings.push(Posting::debit(
                platform_account_id(asset, AccountKind::Fees),
                Bucket::Available,
                fee,
            ));
            postings.push(Posting::credit(&custody, Bucket::Available, fee));
        }
        Self::new(TxKind::Withdrawal, asset, postings)
    }

    /// Releases a withdrawal's hold (the withdrawal failed or was rejected): held back to
    /// available. A network fee already spent on chain is booked as in
    /// [`LedgerTransaction::withdrawal_settlement`].
    pub fn withdrawal_release(
        asset: &str,
        wallet: &str,
        amount: Amount,
        network_fee: Option<Amount>,
    ) -> Result<Self, LedgerError> {
        let mut postings = vec![
            Posting::debit(wallet, Bucket::Held, amount),
            Posting::credit(wallet, Bucket::Available, amount),
        ];
        if let Some(fee) = network_fee.filter(|f| !f.is_zero()) {
            postings.push(Posting::debit(
                platform_account_id(asset, AccountKind::Fees),
                Bucket::Available,
                fee,
            ));
            postings.push(Posting::credit(
                platform_account_id(asset, AccountKind::Custody),
                Bucket::Available,
                fee,
            ));
        }
        Self::new(TxKind::Reversal, asset, postings)
    }

    /// A chain deposit seen, not final: the asset's suspense account → the wallet's pending bucket.
    pub fn chain_deposit_seen(asset: &str, wallet: &str, amount: Amount) -> Result<Self, LedgerError> {
        Self::new(
            TxKind::Deposit,
            asset,
            vec![
                Posting::debit(
                    platform_account_id(asset, AccountKind::Suspense),
                    Bucket::Available,
                    amount,
                ),
                Posting::credit(wallet, Bucket::Pending, amount),
            ],
        )
    }

    /// A chain deposit that reached its threshold: the pending amount goes back to suspense and
    /// custody (what the platform now holds on chain) → the wallet's available bucket.
    pub fn chain_deposit_credit(asset: &str, wallet: &str, amount: Amount) -> Result<Self, LedgerError> {
        let suspense = platform_account_id(asset, AccountKind::Suspense);
        let custody = platform_account_id(asset, AccountKind::Custody);
        Self::new(
            TxKind::Deposit,
            asset,
            vec![
                Posting::debit(wallet, Bucket::Pending, amount),
                Posting::credit(suspense, Bucket::Available, amount),
                Posting::debit(custody, Bucket::Available, amount),
                Posting::credit(wallet, Bucket::Available, amount),
            ],
        )
    }

    /// The compensating entry that undoes `original`: every posting on the opposite side.
    pub fn reversal_of(original: &LedgerTransaction) -> LedgerTransaction {
        let postings = original
            .postings
            .iter()
            .map(|p| Posting {
                side: p.side.opposite(),
                ..p.clone()
            })
            .collect();
        LedgerTransaction {
            kind: TxKind::Reversal,
            asset: original.asset.clone(),
            postings,
        }
    }

    pub fn kind(&self) -> TxKind {
        self.kind
    }

    pub fn asset(&self) -> &str {
        &self.asset
    }

    pub fn postings(&self) -> &[Posting] {
        &self.postings
    }

    /// The net change per (account, bucket), in a stable order (sorted by account then bucket),
    /// which is also the order in which writers lock and update balances.
    pub fn balance_deltas(&self) -> Vec<(String, Bucket, BalanceDelta)> {
        let mut sums: BTreeMap<(String, Bucket), (Amount, Amount)> = BTreeMap::new();
        for posting in &self.postings {
            let entry = sums
                .entry((posting.account_id.clone(), posting.bucket))
                .or_default();
            let side = if posting.side == Side::Credit {
                &mut entry.0
            } else {
                &mut entry.1
            };
            *side = side
                .checked_add(posting.amount)
                .expect("bounded by the constructor");
        }
        sums.into_iter()
            .filter(|(_, (credits, debits))| credits != debits)
            .map(|((account, bucket), (credits, debits))| {
                let delta = if credits > debits {
                    BalanceDelta {
                        amount: credits.checked_sub(debits).expect("credits > debits"),
                        negative: false,
                    }
                } else {
                    BalanceDelta {
                        amount: debits.checked_sub(credits).expect("debits > credits"),
                        negative: true,
                    }
                };
                (account, bucket, delta)
            })
            .collect()
    }

    /// The distinct accounts touched, sorted.
    pub fn account_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.postings.iter().map(|p| p.account_id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn amount(n: u64) -> Amount {
        Amount::from_u64(n)
    }

    #[test]
    fn a_settled_withdrawal_leaves_the_wallet_and_custody_and_books_the_fee() {
        let settle =
            LedgerTransaction::withdrawal_settlement("ETH", "w1", amount(70), Some(amount(3))).unwrap();
        let deltas: Vec<(String, Bucket, bool, Amount)> = settle
            .balance_deltas()
            .into_iter()
            .map(|(a, b, d)| (a, b, d.negative, d.amount))
            .collect();
        assert_eq!(
            deltas,
            vec![
                (
                    "platform:ETH:custody".into(),
                    Bucket::Available,
                    false,
                    amount(73)
                ),
                ("platform:ETH:fees".into(), Bucket::Available, true, amount(3)),
                ("w1".into(), Bucket::Held, true, amount(70)),
            ]
        );
        let no_fee = LedgerTransaction::withdrawal_settlement("ETH", "w1", amount(70), None).unwrap();
        assert_eq!(no_fee.postings().len(), 2);
        let zero_fee = LedgerTransaction::withdrawal_settlement("ETH", "w1", amount(70), Some(Amount::ZERO));
        assert_eq!(zero_fee.unwrap().postings().len(), 2, "a zero fee is no posting");
    }

    #[test]
    fn a_released_withdrawal_returns_the_hold_to_available() {
        let release = LedgerTransaction::withdrawal_release("ETH", "w1", amount(70), None).unwrap();
        let hold = LedgerTransaction::withdrawal_hold("ETH", "w1", amount(70)).unwrap();
        assert_eq!(
            release.balance_deltas(),
            LedgerTransaction::reversal_of(&hold).balance_deltas()
        );
        assert_eq!(release.kind(), TxKind::Reversal);
    }

    #[test]
    fn unbalanced_postings_are_refused() {
        let result = LedgerTransaction::new(
            TxKind::Adjustment,
            "ETH",
            vec![
                Posting::debit("a", Bucket::Available, amount(5)),
                Posting::credit("b", Bucket::Available, amount(4)),
            ],
        );
        assert_eq!(
            result,
            Err(LedgerError::Unbalanced {
                debits: amount(5),
                credits: amount(4)
            })
        );
    }

    #[test]
    fn a_single_posting_or_a_zero_posting_is_refused() {
        let one = vec![Posting::debit("a", Bucket::Available, amount(5))];
        assert_eq!(
            LedgerTransaction::new(TxKind::Fee, "ETH", one),
            Err(LedgerError::TooFewPostings)
        );
        let zero = vec![
            Posting::debit("a", Bucket::Available, amount(0)),
            Posting::credit("b", Bucket::Available, amount(0)),
        ];
        assert_eq!(
            LedgerTransaction::new(TxKind::Fee, "ETH", zero),
            Err(LedgerError::ZeroPosting)
        );
    }

    #[test]
    fn transfer_to_self_is_rejected() {
        assert_eq!(
            LedgerTransaction::transfer("ETH", "w1", "w1", amount(1)),
            Err(LedgerError::SameAccount)
        );
    }

    #[test]
    fn a_hold_moves_available_to_held_in_one_wallet() {
        let hold = LedgerTransaction::withdrawal_hold("ETH", "w1", amount(7)).unwrap();
        let deltas = hold.balance_deltas();
        assert_eq!(
            deltas,
            vec![
                (
                    "w1".to_string(),
                    Bucket::Available,
                    BalanceDelta {
                        amount: amount(7),
                        negative: true
                    }
                ),
                (
                    "w1".to_string(),
                    Bucket::Held,
                    BalanceDelta {
                        amount: amount(7),
                        negative: false
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_deposit_debits_custody_and_credits_the_wallet() {
        let deposit = LedgerTransaction::deposit("USDT", "w9", amount(3)).unwrap();
        assert_eq!(deposit.postings()[0].account_id, "platform:USDT:custody");
        assert_eq!(deposit.postings()[0].side, Side::Debit);
        assert_eq!(deposit.postings()[1].side, Side::Credit);
    }

    proptest! {
        #[test]
        fn a_reversal_cancels_every_delta(amounts in proptest::collection::vec(1u64..1_000_000, 1..8)) {
            let total: u64 = amounts.iter().sum();
            let mut postings: Vec<Posting> = amounts.iter().enumerate()
                .map(|(i, a)| Posting::credit(format!("w{i}"), Bucket::Available, amount(*a)))
                .collect();
            postings.push(Posting::debit("platform:ETH:custody", Bucket::Available, amount(total)));
            let original = LedgerTransaction::new(TxKind::Deposit, "ETH", postings).unwrap();
            let reversal = LedgerTransaction::reversal_of(&original);
            // Re-validate the reversal through the checking constructor.
            let checked = LedgerTransaction::new(TxKind::Reversal, "ETH", reversal.postings().to_vec()).unwrap();
            let mut combined = original.postings().to_vec();
            combined.extend(checked.postings().iter().cloned());
            let both = LedgerTransaction::new(TxKind::Adjustment, "ETH", combined).unwrap();
            prop_assert!(both.balance_deltas().is_empty());
        }

        #[test]
        fn balanced_transactions_have_deltas_that_sum_to_zero(a in 1u64..u64::MAX / 4, b in 1u64..u64::MAX / 4) {
            let tx = LedgerTransaction::new(TxKind::Adjustment, "ETH", vec![
                Posting::debit("x", Bucket::Available, amount(a)),
                Posting::debit("y", Bucket::Held, amount(b)),
                Posting::credit("z", Bucket::Available, amount(a + b)),
            ]).unwrap();
            let (mut plus, mut minus) = (0u128, 0u128);
            for (_, _, delta) in tx.balance_deltas() {
                let value = u128::try_from(delta.amount.atomic()).unwrap();
                if delta.negative { minus += value } else { plus += value }
            }
            prop_assert_eq!(plus, minus);
        }
    }
}
