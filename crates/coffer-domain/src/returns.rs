//! Refunds and disputes (L10): money given back against an earlier transaction, never more than
//! it moved, linked to it both ways.
//!
//! - A **refund** of a confirmed transfer is asked by its recipient and moves the amount back from
//!   the recipient's available balance to the sender's. A refund of a confirmed rail deposit is
//!   asked by the rail (the payment role) and takes the amount out of the wallet back to custody
//!   (the rail pays the payer back off-platform). In full or in part, final at once.
//! - A **dispute** (a chargeback) of a confirmed rail deposit is opened by the rail: the amount
//!   moves from the wallet's available to held (`Disputed`). It is then **released** (the rail
//!   decided for the user: held back to available, the transaction `Failed`) or **reversed**
//!   (held back to custody, the transaction `Confirmed`).
//!
//! What was returned of a transaction is one counter that never expires, charged in the same
//! database transaction as the refund or dispute and limited by the original amount: concurrent
//! requests on any replica cannot return more than the original. A released dispute gives its
//! amount back to the counter (the store does it when a transaction with a counter fails).

use crate::account::{platform_account_id, AccountKind};
use crate::amount::Amount;
use crate::asset::AssetConfig;
use crate::ledger::{LedgerTransaction, Posting, TxKind};
use crate::movement::{LimitCharge, Movement, WalletRef};
use crate::plan::{api_ledger_key, ledger_refusal, movement, within_ledger, Origin, Refusal};
use crate::state::TxState;
use crate::Bucket;

/// The transaction money is returned of, as a plan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub transaction_id: String,
    pub kind: TxKind,
    pub state: TxState,
    pub asset: String,
    pub amount: Amount,
    /// The rail of a rail deposit (ledger key `deposit:<rail>:<reference>`), None otherwise.
    pub rail: Option<String>,
    pub from: Option<WalletRef>,
    pub to: Option<WalletRef>,
}

impl Original {
    /// The rail of `ledger_key` when it is a rail deposit's.
    pub fn rail_of(ledger_key: &str) -> Option<String> {
        let rest = ledger_key.strip_prefix("deposit:")?;
        rest.split_once(':').map(|(rail, _)| rail.to_string())
    }

    fn is_rail_deposit_of(&self, rail: &str) -> bool {
        self.kind == TxKind::Deposit && self.state == TxState::Confirmed && self.rail.as_deref() == Some(rail)
    }

    fn is_transfer_to(&self, user_id: &str) -> bool {
        let recipient = self.to.as_ref().and_then(|w| w.user_id.as_deref());
        self.kind == TxKind::Transfer
            && self.state == TxState::Confirmed
            && self.from.as_ref().is_some_and(|w| w.user_id.is_some())
            && recipient == Some(user_id)
    }
}

/// Who asks: a user (by id) or a rail's service account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester<'a> {
    User(&'a str),
    Rail { rail: &'a str, service_id: &'a str },
}

impl Requester<'_> {
    fn id(&self) -> &str {
        match self {
            Requester::User(id) => id,
            Requester::Rail { service_id, .. } => service_id,
        }
    }
}

/// The counter of what was returned of `original` (refunds and open or reversed disputes).
pub fn returned_charge(original: &Original, amount: Amount) -> LimitCharge {
    let key = format!("returned:{}", original.transaction_id);
    LimitCharge::lifetime(&key, amount, original.amount)
}

fn checked_amount(original: &Original, amount: Option<Amount>) -> Result<Amount, Refusal> {
    let amount = within_ledger(amount.unwrap_or(original.amount))?;
    if amount > original.amount {
        return Err(Refusal::ExceedsOriginal);
    }
    Ok(amount)
}

/// A refund of `original` (all of it when `amount` is None) asked by `requester`.
pub fn plan_refund(
    origin: Origin,
    idempotency_key: &str,
    original: &Original,
    amount: Option<Amount>,
    requester: Requester<'_>,
    asset: &AssetConfig,
) -> Result<Movement, Refusal> {
    if original.asset != asset.symbol {
        return Err(Refusal::AssetMismatch);
    }
    let amount = checked_amount(original, amount)?;
    let (from, to, postings) = match requester {
        Requester::User(user) if original.is_transfer_to(user) => {
            let (payer, recipient) = (original.from.as_ref(), original.to.as_ref());
            let (payer, recipient) = payer.zip(recipient).ok_or(Refusal::NotRefundable)?;
            let postings = vec![
                Posting::debit(&recipient.id, Bucket::Available, amount),
                Posting::credit(&payer.id, Bucket::Available, amount),
            ];
            (recipient, Some(payer), postings)
        }
        Requester::Rail { rail, .. } if original.is_rail_deposit_of(rail) => {
            let wallet = original.to.as_ref().ok_or(Refusal::NotRefundable)?;
            let custody = platform_account_id(&asset.symbol, AccountKind::Custody);
            let postings = vec![
                Posting::debit(&wallet.id, Bucket::Available, amount),
                Posting::credit(custody, Bucket::Available, amount),
            ];
            (wallet, None, postings)
        }
        _ => return Err(Refusal::NotRefundable),
    };
    let ledger = LedgerTransaction::new(TxKind::Refund, &asset.symbol, postings).map_err(ledger_refusal)?;
    let states = [
        (TxState::Created, "refund requested"),
        (TxState::Confirmed, "refunded"),
    ];
    let key = api_ledger_key(requester.id(), idempotency_key);
    let mut refund = movement(origin, ledger, key, &states, amount, asset, Some(from), to);
    refund.original_transaction_id = Some(original.transaction_id.clone());
    refund.limits.push(returned_charge(original, amount));
    Ok(refund)
}

/// A chargeback of the rail deposit `original` (all of it when `amount` is None), opened by its
/// rail: the amount moves from the wallet's available to held and waits in `Disputed`.
pub fn plan_dispute(
    origin: Origin,
    idempotency_key: &str,
    original: &Original,
    amount: Option<Amount>,
    requester: Requester<'_>,
    asset: &AssetConfig,
) -> Result<Movement, Refusal> {
    let Requester::Rail { rail, .. } = requester else {
        return Err(Refusal::NotDisputable);
    };
    if !original.is_rail_deposit_of(rail) || original.asset != asset.symbol {
        return Err(Refusal::NotDisputable);
    }
    let wallet = original.to.as_ref().ok_or(Refusal::NotDisputable)?;
    let amount = checked_amount(original, amount)?;
    let postings = vec![
        Posting::debit(&wallet.id, Bucket::Available, amount),
        Posting::credit(&wallet.id, Bucket::Held, amount),
    ];
    let ledger = LedgerTransaction::new(TxKind::Dispute, &asset.symbol, postings).map_err(ledger_refusal)?;
    let states = [
        (TxState::Created, "chargeback reported by payment rail"),
        (TxState::Disputed, "amount held until the dispute is resolved"),
    ];
    let key = api_ledger_key(requester.id(), idempotency_key);
    let mut dispute = movement(origin, ledger, key, &states, amount, asset, Some(wallet), None);
    dispute.original_transaction_id = Some(original.transaction_id.clone());
    dispute.limits.push(returned_charge(original, amount));
    Ok(dispute)
}

/// How a rail resolves a dispute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisputeOutcome {
    /// Decided for the user: the held amount is available again.
    Released,
    /// Decided for the payer: the held amount goes back to custody (the rail returns it).
    Reversed,
}

impl DisputeOutcome {
    pub fn parse(text: &str) -> Option<DisputeOutcome> {
        match text {
            "released" => Some(DisputeOutcome::Released),
            "reversed" => Some(DisputeOutcome::Reversed),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            DisputeOutcome::Released => "released",
            DisputeOutcome::Reversed => "reversed",
        }
    }

    /// The state a dispute ends in with this outcome.
    pub fn state(&self) -> TxState {
        match self {
            DisputeOutcome::Released => TxState::Failed,
            DisputeOutcome::Reversed => TxState::Confirmed,
        }
    }
}

/// What resolving a dispute does: the state it moves to, its cause and the postings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub to: TxState,
    pub cause: &'static str,
    pub ledger: LedgerTransaction,
}

/// The resolution of an open dispute of `amount` held in `wallet_id`.
pub fn resolve_dispute(asset: &str, wallet_id: &str, amount: Amount, outcome: DisputeOutcome) -> Resolution {
    let (credit, cause) = match outcome {
        DisputeOutcome::Released => (
            Posting::credit(wallet_id, Bucket::Available, amount),
            "dispute released: the amount is available again",
        ),
        DisputeOutcome::Reversed => (
            Posting::credit(
                platform_account_id(asset, AccountKind::Custody),
                Bucket::Available,
                amount,
            ),
            "dispute reversed: the amount went back through the payment rail",
        ),
    };
    let postings = vec![Posting::debit(wallet_id, Bucket::Held, amount), credit];
    let ledger = LedgerTransaction::new(TxKind::Dispute, asset, postings)
        .expect("a held amount within the ledger limit");
    Resolution {
        to: outcome.state(),
        cause,
        ledger,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asset::AssetCatalog;
    use crate::ledger::Side;
    use proptest::prelude::*;

    fn usd() -> AssetConfig {
        let json = r#"{"version":1,"assets":[{"symbol":"USD","chain":"ethereum","decimals":2,"contract":null,
            "confirmations_required":1,"deposits_enabled":true,"withdrawals_enabled":true,
            "withdrawal_min":"1","withdrawal_max":"1000","daily_withdrawal_limit":"1000","review_threshold":"500"}]}"#;
        AssetCatalog::from_json(json).unwrap().get("USD").unwrap().clone()
    }

    fn wallet(id: &str, user: &str) -> WalletRef {
        WalletRef {
            id: id.into(),
            user_id: Some(user.into()),
            asset: "USD".into(),
        }
    }

    fn origin() -> Origin {
        Origin {
            transaction_id: "r-1".into(),
            now: "2026-12-04T10:00:00Z".parse().unwrap(),
            initiated_by: "bob".into(),
        }
    }

    fn transfer() -> Original {
        Original {
            transaction_id: "t-1".into(),
            kind: TxKind::Transfer,
            state: TxState::Confirmed,
            asset: "USD".into(),
            amount: Amount::from_u64(10_000),
            rail: None,
            from: Some(wallet("wa", "alice")),
            to: Some(wallet("wb", "bob")),
        }
    }

    fn rail_deposit() -> Original {
        Original {
            transaction_id: "d-1".into(),
            kind: TxKind::Deposit,
            rail: Original::rail_of("deposit:payment:bank-7"),
            from: None,
            ..transfer()
        }
    }

    const RAIL: Requester<'static> = Requester::Rail {
        rail: "payment",
        service_id: "svc-pay",
    };

    fn net(movement: &Movement, account: &str, bucket: Bucket) -> i128 {
        movement
            .ledger
            .postings()
            .iter()
            .filter(|p| p.account_id == account && p.bucket == bucket)
            .map(|p| {
                let value = p.amount.to_string().parse::<i128>().unwrap();
                if p.side == Side::Credit {
                    value
                } else {
                    -value
                }
            })
            .sum()
    }

    #[test]
    fn the_recipient_refunds_a_transfer_back_to_its_sender_in_part() {
        let r = plan_refund(
            origin(),
            "k",
            &transfer(),
            Some(Amount::from_u64(2_500)),
            Requester::User("bob"),
            &usd(),
        )
        .unwrap();
        assert_eq!(r.ledger.kind(), TxKind::Refund);
        assert_eq!(
            (net(&r, "wb", Bucket::Available), net(&r, "wa", Bucket::Available)),
            (-2_500, 2_500)
        );
        assert_eq!(r.original_transaction_id.as_deref(), Some("t-1"));
        assert_eq!(r.ledger_key, "api:bob:k");
        assert_eq!(r.state, TxState::Confirmed);
        assert_eq!(r.participants, vec!["alice", "bob"]);
        let charge = &r.limits[0];
        assert_eq!(charge.key, "lifetime:returned:t-1");
        assert!(LimitCharge::is_lifetime(&charge.key));
        assert_eq!(
            (charge.amount, charge.limit),
            (Amount::from_u64(2_500), Amount::from_u64(10_000))
        );
    }

    #[test]
    fn only_the_recipient_refunds_a_transfer_and_only_the_rail_a_rail_deposit() {
        let refund = |original: &Original, who| {
            plan_refund(origin(), "k", original, None, who, &usd()).map(|m| m.amount)
        };
        assert_eq!(
            refund(&transfer(), Requester::User("alice")),
            Err(Refusal::NotRefundable)
        );
        assert_eq!(refund(&transfer(), RAIL), Err(Refusal::NotRefundable));
        assert_eq!(
            refund(&rail_deposit(), Requester::User("bob")),
            Err(Refusal::NotRefundable)
        );
        let other_rail = Requester::Rail {
            rail: "card",
            service_id: "svc-card",
        };
        assert_eq!(refund(&rail_deposit(), other_rail), Err(Refusal::NotRefundable));
        assert_eq!(
            refund(&rail_deposit(), RAIL),
            Ok(Amount::from_u64(10_000)),
            "all of it by default"
        );
        let pending = Original {
            state: TxState::ManualReview,
            ..transfer()
        };
        assert_eq!(
            refund(&pending, Requester::User("bob")),
            Err(Refusal::NotRefundable)
        );
        let chain = Original {
            rail: None,
            ..rail_deposit()
        };
        assert_eq!(
            refund(&chain, RAIL),
            Err(Refusal::NotRefundable),
            "a chain deposit has no rail"
        );
        let refund_of_refund = Original {
            kind: TxKind::Refund,
            ..transfer()
        };
        assert_eq!(
            refund(&refund_of_refund, Requester::User("bob")),
            Err(Refusal::NotRefundable)
        );
    }

    #[test]
    fn a_rail_refund_returns_the_amount_to_custody() {
        let r = plan_refund(
            origin(),
            "k",
            &rail_deposit(),
            Some(Amount::from_u64(1)),
            RAIL,
            &usd(),
        )
        .unwrap();
        assert_eq!(net(&r, "wb", Bucket::Available), -1);
        assert_eq!(net(&r, "platform:USD:custody", Bucket::Available), 1);
        assert_eq!(r.ledger_key, "api:svc-pay:k");
        assert_eq!(r.participants, vec!["bob"]);
    }

    #[test]
    fn a_dispute_holds_then_releases_or_reverses() {
        let d = plan_dispute(
            origin(),
            "k",
            &rail_deposit(),
            Some(Amount::from_u64(4_000)),
            RAIL,
            &usd(),
        )
        .unwrap();
        assert_eq!(d.state, TxState::Disputed);
        assert_eq!(
            (net(&d, "wb", Bucket::Available), net(&d, "wb", Bucket::Held)),
            (-4_000, 4_000)
        );
        assert_eq!(
            d.limits[0].key, "lifetime:returned:d-1",
            "one counter with refunds"
        );
        let released = resolve_dispute("USD", "wb", d.amount, DisputeOutcome::Released);
        assert_eq!(released.to, TxState::Failed);
        assert!(TxState::Disputed.transition(released.to).is_ok());
        let reversed = resolve_dispute("USD", "wb", d.amount, DisputeOutcome::Reversed);
        assert_eq!(reversed.to, TxState::Confirmed);
        let custody: Vec<_> = reversed
            .ledger
            .postings()
            .iter()
            .filter(|p| p.account_id == "platform:USD:custody")
            .collect();
        assert_eq!(custody.len(), 1);
        assert_eq!(custody[0].side, Side::Credit);
        assert_eq!(
            plan_dispute(origin(), "k", &transfer(), None, RAIL, &usd()).unwrap_err(),
            Refusal::NotDisputable
        );
        assert_eq!(
            plan_dispute(
                origin(),
                "k",
                &rail_deposit(),
                None,
                Requester::User("bob"),
                &usd()
            )
            .unwrap_err(),
            Refusal::NotDisputable
        );
        assert_eq!(DisputeOutcome::parse("reversed"), Some(DisputeOutcome::Reversed));
        assert_eq!(DisputeOutcome::parse("won"), None);
    }

    proptest! {
        /// Whatever the amount asked, a refund is either refused or returns at most the original,
        /// balanced, with its counter charged by exactly what it moves.
        #[test]
        fn a_refund_never_plans_more_than_the_original(asked in 1u64..30_000) {
            let planned = plan_refund(origin(), "k", &transfer(), Some(Amount::from_u64(asked)), Requester::User("bob"), &usd());
            match planned {
                Ok(r) => {
                    prop_assert!(asked <= 10_000);
                    prop_assert_eq!(r.amount, Amount::from_u64(asked));
                    prop_assert_eq!(r.limits[0].amount, r.amount);
                    prop_assert_eq!(net(&r, "wa", Bucket::Available), i128::from(asked));
                }
                Err(refusal) => prop_assert!(asked > 10_000 && refusal == Refusal::ExceedsOriginal),
            }
        }
    }
}
