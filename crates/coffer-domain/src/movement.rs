//! A planned money movement: everything the store writes for one request or chain event, decided
//! here without IO (the ledger postings, the transaction's state and timeline, who may see it,
//! the limits it charges and the events it emits). The store applies movements, alone or many
//! in one database transaction, and adds only what it learns while applying (balances after).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::account::AccountKind;
use crate::amount::{signed_decimal_string, Amount};
use crate::book::AccountBalances;
use crate::events::{BalanceUpdatedV1, EventType, TransactionEventV1, WithdrawalConfirmedV1};
use crate::ledger::{LedgerTransaction, TxKind};
use crate::state::{StateChange, TxState};

/// A wallet as a plan needs it: its id, its owner (None for platform accounts) and asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletRef {
    pub id: String,
    pub user_id: Option<String>,
    pub asset: String,
}

/// A charge against a limited counter (e.g. a wallet's withdrawals of one UTC day), refused when
/// the counter would pass `limit`; charged in the same database transaction as the movement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCharge {
    /// `<wallet id>:<YYYY-MM-DD>` for the daily withdrawal limit.
    pub key: String,
    pub amount: Amount,
    pub limit: Amount,
}

/// The prefix of counters that never expire (the daily ones are dropped after a few days).
pub const LIFETIME_COUNTER_PREFIX: &str = "lifetime:";

impl LimitCharge {
    /// A charge on a counter that is kept for good: `lifetime:<key>`.
    pub fn lifetime(key: &str, amount: Amount, limit: Amount) -> Self {
        LimitCharge {
            key: format!("{LIFETIME_COUNTER_PREFIX}{key}"),
            amount,
            limit,
        }
    }

    /// Whether this counter is kept for good ([`LimitCharge::lifetime`]).
    pub fn is_lifetime(key: &str) -> bool {
        key.starts_with(LIFETIME_COUNTER_PREFIX)
    }

    /// The charge of `amount` on `wallet_id`'s counter for the UTC day of `now`.
    pub fn daily(wallet_id: &str, amount: Amount, limit: Amount, now: DateTime<Utc>) -> Self {
        LimitCharge {
            key: format!("{wallet_id}:{}", now.format("%Y-%m-%d")),
            amount,
            limit,
        }
    }
}

/// An event for one user's wallet, with its versioned payload as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedEvent {
    pub event_type: EventType,
    /// The subject: the wallet the event is about (its per-wallet order).
    pub wallet_id: String,
    /// Whose stream receives it.
    pub user_id: String,
    pub data: serde_json::Value,
}

impl PlannedEvent {
    pub fn new(event_type: EventType, wallet_id: &str, user_id: &str, data: &impl Serialize) -> Self {
        PlannedEvent {
            event_type,
            wallet_id: wallet_id.to_string(),
            user_id: user_id.to_string(),
            data: serde_json::to_value(data).expect("event payloads serialize"),
        }
    }
}

/// A money movement ready to be applied: a new transaction with its ledger postings.
#[derive(Debug, Clone, PartialEq)]
pub struct Movement {
    /// Chosen by the caller (a time-ordered id); kept across the store's retries.
    pub transaction_id: String,
    pub ledger: LedgerTransaction,
    /// Deterministic: `api:<user>:<idempotency key>`, `deposit:<rail>:<reference>`,
    /// `chain:<chain>:<tx hash>:<log index>`. A second movement with the key is not applied.
    pub ledger_key: String,
    pub state: TxState,
    /// Ends in `state`.
    pub timeline: Vec<StateChange>,
    pub amount: Amount,
    /// The asset's decimals, for the amounts in the events.
    pub decimals: u8,
    pub initiated_by: String,
    pub from_wallet_id: Option<String>,
    pub to_wallet_id: Option<String>,
    pub external_reference: Option<String>,
    pub destination: Option<String>,
    /// The transaction a refund or dispute returns money of.
    pub original_transaction_id: Option<String>,
    /// Sorted, distinct: the owners of the user wallets the postings touch (checked by the book).
    pub participants: Vec<String>,
    pub limits: Vec<LimitCharge>,
    /// The events of the movement; `wallet.balance.updated` events are added by the store, which
    /// knows the balances after it.
    pub events: Vec<PlannedEvent>,
}

/// The fields of a transaction its events describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionSummary {
    pub transaction_id: String,
    pub kind: TxKind,
    pub state: TxState,
    pub asset: String,
    pub amount: Amount,
    pub decimals: u8,
    pub from_wallet_id: Option<String>,
}

impl Movement {
    pub fn summary(&self) -> TransactionSummary {
        TransactionSummary {
            transaction_id: self.transaction_id.clone(),
            kind: self.ledger.kind(),
            state: self.state,
            asset: self.ledger.asset().to_string(),
            amount: self.amount,
            decimals: self.decimals,
            from_wallet_id: self.from_wallet_id.clone(),
        }
    }

    #[cfg(test)]
    pub(crate) fn for_test(ledger: LedgerTransaction, participants: &[&str]) -> Movement {
        let mut participants: Vec<String> = participants.iter().map(|p| p.to_string()).collect();
        participants.sort();
        participants.dedup();
        Movement {
            transaction_id: "t".into(),
            amount: ledger.postings()[0].amount,
            ledger,
            ledger_key: "k".into(),
            state: TxState::Confirmed,
            timeline: vec![StateChange::initial(TxState::Confirmed, Utc::now(), "test")],
            decimals: 0,
            initiated_by: "test".into(),
            from_wallet_id: None,
            to_wallet_id: None,
            external_reference: None,
            destination: None,
            original_transaction_id: None,
            participants,
            limits: Vec::new(),
            events: Vec::new(),
        }
    }
}

/// The timeline of a new transaction that walks `states` at `now`, each with its cause.
pub fn timeline(states: &[(TxState, &str)], now: DateTime<Utc>) -> Vec<StateChange> {
    let mut timeline = vec![StateChange::initial(states[0].0, now, states[0].1)];
    for pair in states.windows(2) {
        timeline.push(StateChange::step(pair[0].0, pair[1].0, now, pair[1].1).expect("allowed transitions"));
    }
    timeline
}

/// The owners of `wallets`, sorted and distinct: who may see a transaction touching them.
pub fn participants(wallets: &[&WalletRef]) -> Vec<String> {
    let mut owners: Vec<String> = wallets.iter().filter_map(|w| w.user_id.clone()).collect();
    owners.sort();
    owners.dedup();
    owners
}

/// One transaction event of type `event_type` per user wallet of `wallets`: the transaction as
/// that wallet's owner sees it. The amount is signed from the wallet's side: the net of `ledger`
/// on its available bucket, or (no available change: a hold, a state change) the transaction's
/// amount, negative for the wallet it leaves.
pub fn transaction_events(
    event_type: EventType,
    tx: &TransactionSummary,
    wallets: &[&WalletRef],
    ledger: Option<&LedgerTransaction>,
) -> Vec<PlannedEvent> {
    let deltas = ledger.map(LedgerTransaction::balance_deltas).unwrap_or_default();
    let mut events = Vec::new();
    for wallet in wallets {
        let Some(user_id) = &wallet.user_id else { continue };
        let available = deltas
            .iter()
            .find(|(id, bucket, _)| id == &wallet.id && *bucket == crate::Bucket::Available);
        let (amount, negative) = match available {
            Some((_, _, delta)) => (delta.amount, delta.negative),
            None => (
                tx.amount,
                tx.from_wallet_id.as_deref() == Some(wallet.id.as_str()),
            ),
        };
        let data = TransactionEventV1 {
            transaction_id: tx.transaction_id.clone(),
            wallet_id: wallet.id.clone(),
            kind: tx.kind.as_str().to_string(),
            state: tx.state.as_str().to_string(),
            asset: tx.asset.clone(),
            amount: signed_decimal_string(&amount, negative, tx.decimals),
        };
        events.push(PlannedEvent::new(event_type, &wallet.id, user_id, &data));
    }
    events
}

/// Where a settled withdrawal went on chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub destination: Option<String>,
    pub chain: Option<String>,
    pub tx_hash: Option<String>,
}

/// The events of a state change of an existing transaction (`tx.state` is the new state):
/// `requires_review` when it moves to ManualReview, otherwise `updated`, for every user wallet
/// involved; and `wallet.withdrawal.confirmed` for the paying wallet when a withdrawal settles.
pub fn state_change_events(
    tx: &TransactionSummary,
    wallets: &[&WalletRef],
    ledger: Option<&LedgerTransaction>,
    settlement: Option<&Settlement>,
) -> Vec<PlannedEvent> {
    let event_type = match tx.state {
        TxState::ManualReview => EventType::TransactionRequiresReview,
        _ => EventType::TransactionUpdated,
    };
    let mut events = transaction_events(event_type, tx, wallets, ledger);
    let settled = tx.kind == TxKind::Withdrawal && tx.state == TxState::Confirmed;
    let payer = wallets
        .iter()
        .find(|w| tx.from_wallet_id.as_deref() == Some(w.id.as_str()));
    if let (true, Some(payer), Some(user_id)) = (settled, payer, payer.and_then(|p| p.user_id.as_deref())) {
        let settlement = settlement.cloned().unwrap_or(Settlement {
            destination: None,
            chain: None,
            tx_hash: None,
        });
        let data = WithdrawalConfirmedV1 {
            transaction_id: tx.transaction_id.clone(),
            wallet_id: payer.id.clone(),
            asset: tx.asset.clone(),
            amount: signed_decimal_string(&tx.amount, true, tx.decimals),
            destination: settlement.destination,
            chain: settlement.chain,
            tx_hash: settlement.tx_hash,
        };
        events.push(PlannedEvent::new(
            EventType::WithdrawalConfirmed,
            &payer.id,
            user_id,
            &data,
        ));
    }
    events
}

/// `wallet.balance.updated` for a user wallet after a movement (None for platform accounts).
pub fn balance_event(
    wallet_id: &str,
    balances: &AccountBalances,
    decimals: u8,
    transaction_id: &str,
) -> Option<PlannedEvent> {
    let user_id = balances
        .user_id
        .as_deref()
        .filter(|_| balances.kind == AccountKind::User)?;
    let amount = |value: crate::book::SignedAmount| {
        assert!(!value.negative, "user balances are never negative");
        value.magnitude
    };
    let (available, pending, held) = (
        amount(balances.available),
        amount(balances.pending),
        amount(balances.held),
    );
    let total = available
        .checked_add(pending)
        .and_then(|t| t.checked_add(held))
        .expect("each is within the ledger limit");
    let data = BalanceUpdatedV1 {
        wallet_id: wallet_id.to_string(),
        asset: balances.asset.clone(),
        decimals,
        available: available.to_decimal_string(decimals),
        pending: pending.to_decimal_string(decimals),
        held: held.to_decimal_string(decimals),
        total: total.to_decimal_string(decimals),
        transaction_id: transaction_id.to_string(),
    };
    Some(PlannedEvent::new(
        EventType::BalanceUpdated,
        wallet_id,
        user_id,
        &data,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::SignedAmount;

    fn wallet(id: &str, user: Option<&str>) -> WalletRef {
        WalletRef {
            id: id.into(),
            user_id: user.map(String::from),
            asset: "ETH".into(),
        }
    }

    fn summary(kind: TxKind, from: Option<&str>, amount: u64) -> TransactionSummary {
        TransactionSummary {
            transaction_id: "tx".into(),
            kind,
            state: TxState::Confirmed,
            asset: "ETH".into(),
            amount: Amount::from_u64(amount),
            decimals: 2,
            from_wallet_id: from.map(String::from),
        }
    }

    #[test]
    fn a_transfer_event_is_negative_for_the_sender_and_positive_for_the_recipient() {
        let (a, b) = (wallet("a", Some("alice")), wallet("b", Some("bob")));
        let ledger = LedgerTransaction::transfer("ETH", "a", "b", Amount::from_u64(75)).unwrap();
        let tx = summary(TxKind::Transfer, Some("a"), 75);
        let events = transaction_events(EventType::TransactionCreated, &tx, &[&a, &b], Some(&ledger));
        let amounts: Vec<(&str, &str, &str)> = events
            .iter()
            .map(|e| {
                (
                    e.wallet_id.as_str(),
                    e.user_id.as_str(),
                    e.data["amount"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(amounts, vec![("a", "alice", "-0.75"), ("b", "bob", "0.75")]);
    }

    #[test]
    fn a_hold_has_no_available_net_and_shows_the_amount_leaving() {
        let a = wallet("a", Some("alice"));
        let hold = LedgerTransaction::withdrawal_hold("ETH", "a", Amount::from_u64(50)).unwrap();
        let tx = summary(TxKind::Withdrawal, Some("a"), 50);
        let events = transaction_events(EventType::TransactionCreated, &tx, &[&a], Some(&hold));
        assert_eq!(events[0].data["amount"], "-0.5");
        let state_only = transaction_events(EventType::TransactionUpdated, &tx, &[&a], None);
        assert_eq!(state_only[0].data["amount"], "-0.5");
    }

    #[test]
    fn platform_accounts_get_no_events() {
        let custody = wallet("platform:ETH:custody", None);
        let tx = summary(TxKind::Deposit, None, 1);
        assert!(transaction_events(EventType::TransactionCreated, &tx, &[&custody], None).is_empty());
        let balances = AccountBalances {
            kind: AccountKind::Custody,
            user_id: None,
            asset: "ETH".into(),
            available: SignedAmount::new(Amount::from_u64(1), true),
            pending: SignedAmount::ZERO,
            held: SignedAmount::ZERO,
        };
        assert_eq!(balance_event("platform:ETH:custody", &balances, 2, "tx"), None);
    }

    #[test]
    fn a_settled_withdrawal_is_updated_and_confirmed_and_a_review_requires_review() {
        let a = wallet("a", Some("alice"));
        let settle =
            LedgerTransaction::withdrawal_settlement("ETH", "a", Amount::from_u64(70), None).unwrap();
        let tx = summary(TxKind::Withdrawal, Some("a"), 70);
        let settlement = Settlement {
            destination: Some("0xdd".into()),
            chain: Some("ethereum".into()),
            tx_hash: Some("0xhash".into()),
        };
        let events = state_change_events(&tx, &[&a], Some(&settle), Some(&settlement));
        let types: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
        assert_eq!(
            types,
            vec![EventType::TransactionUpdated, EventType::WithdrawalConfirmed]
        );
        assert_eq!(events[1].data["amount"], "-0.7");
        assert_eq!(events[1].data["tx_hash"], "0xhash");
        let mut review = tx.clone();
        review.state = TxState::ManualReview;
        let types: Vec<EventType> = state_change_events(&review, &[&a], None, None)
            .iter()
            .map(|e| e.event_type)
            .collect();
        assert_eq!(types, vec![EventType::TransactionRequiresReview]);
        let mut deposit = tx;
        deposit.kind = TxKind::Deposit;
        assert_eq!(
            state_change_events(&deposit, &[&a], None, None).len(),
            1,
            "no withdrawal event for a deposit"
        );
    }

    #[test]
    fn a_balance_event_carries_every_bucket_and_the_total() {
        let balances = AccountBalances {
            kind: AccountKind::User,
            user_id: Some("alice".into()),
            asset: "ETH".into(),
            available: SignedAmount::new(Amount::from_u64(125), false),
            pending: SignedAmount::new(Amount::from_u64(5), false),
            held: SignedAmount::new(Amount::from_u64(50), false),
        };
        let event = balance_event("a", &balances, 2, "tx").unwrap();
        assert_eq!(event.event_type, EventType::BalanceUpdated);
        assert_eq!(
            (
                event.data["available"].as_str(),
                event.data["pending"].as_str(),
                event.data["held"].as_str(),
                event.data["total"].as_str()
            ),
            (Some("1.25"), Some("0.05"), Some("0.5"), Some("1.8"))
        );
    }
}
