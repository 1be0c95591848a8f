//! Sweeping deposit addresses to the hot wallet (issue 17 item 2): the pure rules, no IO.
//!
//! Deposits land on per-user HD addresses (`m/44'/60'/0'/0/i`); a sweep moves what one address
//! holds to the hot wallet. Between two platform addresses nothing changes for users or for
//! custody (custody is one account per asset, whatever address holds the coins), except the gas:
//! what the chain actually charged (receipt `gasUsed × effectiveGasPrice`) leaves custody and is
//! booked against the asset's fees account ([`gas_fee_booking`]).
//!
//! A sweep is signed once and tracked like a withdrawal ([`SweepState`]); the adapter stores the
//! signed transaction before it broadcasts, with conditional transitions, so a restarted process
//! or a second replica never signs a second transaction for the same address and nonce.

use thiserror::Error;

use crate::account::{platform_account_id, AccountKind};
use crate::amount::Amount;
use crate::asset::AssetConfig;
use crate::ledger::{LedgerError, LedgerTransaction, Posting, TxKind};
use crate::movement::Movement;
use crate::plan::Origin;
use crate::replacement::Fees;
use crate::Bucket;

/// Gas of a plain value transfer to an address without code.
pub const NATIVE_TRANSFER_GAS: u64 = 21_000;

/// The gas limit of a token sweep (an ERC-20 `transfer`, typically 35,000–65,000 gas): what
/// the gas funding covers. Unused gas stays on the deposit address as coin for the next sweep.
pub const TOKEN_TRANSFER_GAS: u64 = 100_000;

/// An asset's sweeping policy (asset configuration `sweep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepPolicy {
    /// Balances below this (atomic units of the swept asset) are dust and stay where they are.
    pub min_amount: Amount,
    /// The most addresses one round sweeps.
    pub batch_max: usize,
    /// A round is skipped while base fee + tip (wei per gas) is above this.
    pub gas_price_ceiling_wei: u128,
}

/// The fee fields a sweep is signed with (EIP-1559, wei per gas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepFees {
    pub base_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

impl SweepFees {
    /// What a gas unit may cost at most: `2 × base fee + tip`, the usual headroom for the base
    /// fee rising over the next blocks. The sweep reserves this much per gas unit; the chain
    /// charges `base fee + tip` at most, and the difference stays on the deposit address as dust.
    pub fn max_fee_per_gas(&self) -> Option<u128> {
        self.base_fee_per_gas
            .checked_mul(2)?
            .checked_add(self.max_priority_fee_per_gas)
    }

    /// What the round compares with the ceiling: base fee + tip.
    pub fn effective_price(&self) -> Option<u128> {
        self.base_fee_per_gas.checked_add(self.max_priority_fee_per_gas)
    }
}

/// Why an address is not swept (this round).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoSweep {
    #[error("the balance is below the sweep minimum (dust)")]
    BelowMinimum,
    #[error("gas costs {price} wei per gas, above the ceiling of {ceiling}")]
    GasAboveCeiling { price: u128, ceiling: u128 },
    #[error("the balance does not cover the gas of its own sweep")]
    GasExceedsBalance,
    #[error("the fee arithmetic overflowed")]
    Overflow,
}

/// A planned native-coin sweep: send `value` with these fees; the gas reserved is
/// `gas_limit × max_fee_per_gas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NativeSweep {
    pub value: Amount,
    pub gas_limit: u64,
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

/// Whether a round may run at all at these fees.
pub fn check_ceiling(policy: &SweepPolicy, fees: SweepFees) -> Result<(), NoSweep> {
    let price = fees.effective_price().ok_or(NoSweep::Overflow)?;
    if price > policy.gas_price_ceiling_wei {
        return Err(NoSweep::GasAboveCeiling {
            price,
            ceiling: policy.gas_price_ceiling_wei,
        });
    }
    Ok(())
}

/// The sweep of a native-coin `balance`: everything but the most its own gas can cost, so the
/// transaction can never fail for want of funds. Refused below the minimum, above the ceiling,
/// or when nothing would be left to send.
pub fn plan_native(policy: &SweepPolicy, balance: Amount, fees: SweepFees) -> Result<NativeSweep, NoSweep> {
    if balance < policy.min_amount || balance.is_zero() {
        return Err(NoSweep::BelowMinimum);
    }
    check_ceiling(policy, fees)?;
    let max_fee_per_gas = fees.max_fee_per_gas().ok_or(NoSweep::Overflow)?;
    let reserve = gas_cost(NATIVE_TRANSFER_GAS, max_fee_per_gas).ok_or(NoSweep::Overflow)?;
    let value = balance
        .checked_sub(reserve)
        .filter(|v| !v.is_zero())
        .ok_or(NoSweep::GasExceedsBalance)?;
    Ok(NativeSweep {
        value,
        gas_limit: NATIVE_TRANSFER_GAS,
        max_fee_per_gas,
        max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
    })
}

/// The replacement of a stuck native sweep `stuck` (same nonce) offering `fees` (from
/// [`crate::replacement::next_fees`]): a higher maximum fee reserves more gas, so the value is
/// lowered until `value + gas_limit × max_fee_per_gas ≤ balance` (what the address holds now),
/// and never raised above the stuck version's. [`NoSweep::GasExceedsBalance`] when nothing
/// would be left to send: then the sweep is not replaced.
pub fn replan_native(stuck: &NativeSweep, balance: Amount, fees: Fees) -> Result<NativeSweep, NoSweep> {
    let reserve = gas_cost(stuck.gas_limit, fees.max_fee_per_gas).ok_or(NoSweep::Overflow)?;
    let value = balance
        .checked_sub(reserve)
        .map(|fits| fits.min(stuck.value))
        .filter(|v| !v.is_zero())
        .ok_or(NoSweep::GasExceedsBalance)?;
    Ok(NativeSweep {
        value,
        gas_limit: stuck.gas_limit,
        max_fee_per_gas: fees.max_fee_per_gas,
        max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
    })
}

/// What an ERC-20 sweep needs on the deposit address before it can be signed: exactly
/// `gas_limit × max_fee_per_gas` of the chain's coin, less what the address holds already
/// (`None` when it holds enough). The hot wallet funds the difference first. Refused below the
/// token minimum or above the ceiling.
pub fn erc20_gas_funding(
    policy: &SweepPolicy,
    token_balance: Amount,
    coin_balance: Amount,
    gas_limit: u64,
    fees: SweepFees,
) -> Result<Option<Amount>, NoSweep> {
    if token_balance < policy.min_amount || token_balance.is_zero() {
        return Err(NoSweep::BelowMinimum);
    }
    check_ceiling(policy, fees)?;
    let max_fee_per_gas = fees.max_fee_per_gas().ok_or(NoSweep::Overflow)?;
    let needed = gas_cost(gas_limit, max_fee_per_gas).ok_or(NoSweep::Overflow)?;
    Ok(needed.checked_sub(coin_balance).filter(|d| !d.is_zero()))
}

/// A planned token sweep: the deposit address sends its whole `amount` of the token with these
/// fees; first the hot wallet sends it `funding` of the chain's coin, when it lacks the gas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSweep {
    pub amount: Amount,
    pub gas_limit: u64,
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
    /// Coin the hot wallet sends first (`None`: the address holds enough for its gas).
    pub funding: Option<Amount>,
}

/// The sweep of a token `token_balance` from an address holding `coin_balance` of the chain's
/// coin: all of the token (its gas is paid in the coin, not in the token), funded with exactly
/// the gas shortfall ([`erc20_gas_funding`]).
pub fn plan_token(
    policy: &SweepPolicy,
    token_balance: Amount,
    coin_balance: Amount,
    fees: SweepFees,
) -> Result<TokenSweep, NoSweep> {
    let funding = erc20_gas_funding(policy, token_balance, coin_balance, TOKEN_TRANSFER_GAS, fees)?;
    Ok(TokenSweep {
        amount: token_balance,
        gas_limit: TOKEN_TRANSFER_GAS,
        max_fee_per_gas: fees.max_fee_per_gas().ok_or(NoSweep::Overflow)?,
        max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
        funding,
    })
}

/// `gas × price_per_gas` in atomic units.
pub fn gas_cost(gas: u64, price_per_gas: u128) -> Option<Amount> {
    let product = ruint::aliases::U256::from(gas).checked_mul(ruint::aliases::U256::from(price_per_gas))?;
    Some(Amount::from_atomic(product))
}

/// The movement booking the gas a mined sweep (or its gas funding) paid, when it cost anything:
/// a `fee` transaction (custody → fees, see [`gas_fee_booking`]) final at once, with the ledger
/// key `sweep:<key>` so it is booked once (`key` is the sweep's id, `<id>:funding` for its
/// funding).
pub fn plan_gas_fee(
    origin: Origin,
    key: &str,
    paid: crate::gas::PaidGas<'_>,
    coin: &AssetConfig,
) -> Result<Option<Movement>, LedgerError> {
    let paid = crate::gas::PaidGas {
        ledger_key: format!("sweep:{key}"),
        ..paid
    };
    crate::gas::plan_paid_gas(origin, &paid, coin)
}

/// The booking of a confirmed sweep's gas, `gas_used × effective_gas_price` from its receipt:
/// custody (the chain's coin) goes down by it, against the fees account. `None` when the chain
/// charged nothing (a zero base fee and tip on a dev chain).
pub fn gas_fee_booking(
    coin_asset: &str,
    gas_used: u64,
    effective_gas_price: u128,
) -> Result<Option<LedgerTransaction>, LedgerError> {
    let fee = gas_cost(gas_used, effective_gas_price).ok_or(LedgerError::AboveLedgerLimit)?;
    if fee.is_zero() {
        return Ok(None);
    }
    LedgerTransaction::new(
        TxKind::Fee,
        coin_asset,
        vec![
            Posting::debit(
                platform_account_id(coin_asset, AccountKind::Fees),
                Bucket::Available,
                fee,
            ),
            Posting::credit(
                platform_account_id(coin_asset, AccountKind::Custody),
                Bucket::Available,
                fee,
            ),
        ],
    )
    .map(Some)
}

/// A sweep's life, tracked like a withdrawal's: planned (address claimed with its nonce) →
/// signed (raw transaction and hash stored, before anything is sent) → broadcasted → confirmed
/// (gas booked) or failed (the nonce can be planned again only when the chain proves the signed
/// transaction can never be mined). A token sweep whose address lacks gas goes through
/// funding (the hot wallet's coin transfer signed and stored with the hot wallet's next nonce)
/// and funded (that transfer confirmed, its gas booked) before it is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SweepState {
    Planned,
    Funding,
    Funded,
    Signed,
    Broadcasted,
    Confirmed,
    Failed,
}

impl SweepState {
    pub fn as_str(&self) -> &'static str {
        match self {
            SweepState::Planned => "planned",
            SweepState::Funding => "funding",
            SweepState::Funded => "funded",
            SweepState::Signed => "signed",
            SweepState::Broadcasted => "broadcasted",
            SweepState::Confirmed => "confirmed",
            SweepState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            SweepState::Planned,
            SweepState::Funding,
            SweepState::Funded,
            SweepState::Signed,
            SweepState::Broadcasted,
            SweepState::Confirmed,
            SweepState::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Whether `self → next` is allowed. A signed sweep is never signed again: from `Signed`
    /// the only ways on are sending the stored bytes (`Broadcasted`) or the chain's verdict.
    /// Funding happens once, before signing.
    pub fn can_become(self, next: SweepState) -> bool {
        use SweepState::*;
        matches!(
            (self, next),
            (Planned, Signed)
                | (Planned, Funding)
                | (Planned, Failed)
                | (Funding, Funded)
                | (Funding, Failed)
                | (Funded, Signed)
                | (Signed, Broadcasted)
                | (Signed, Confirmed)
                | (Signed, Failed)
                | (Broadcasted, Confirmed)
                | (Broadcasted, Failed)
        )
    }

    pub fn is_final(self) -> bool {
        matches!(self, SweepState::Confirmed | SweepState::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GWEI: u128 = 1_000_000_000;

    fn policy() -> SweepPolicy {
        SweepPolicy {
            min_amount: Amount::from_u128(10_000_000 * GWEI), // 0.01 ETH
            batch_max: 50,
            gas_price_ceiling_wei: 100 * GWEI,
        }
    }

    fn fees(base_gwei: u128, tip_gwei: u128) -> SweepFees {
        SweepFees {
            base_fee_per_gas: base_gwei * GWEI,
            max_priority_fee_per_gas: tip_gwei * GWEI,
        }
    }

    #[test]
    fn a_native_sweep_sends_the_balance_less_the_most_its_gas_can_cost() {
        let balance = Amount::from_u128(1_000_000_000 * GWEI); // 1 ETH
        let sweep = plan_native(&policy(), balance, fees(10, 1)).unwrap();
        assert_eq!(sweep.max_fee_per_gas, 21 * GWEI);
        assert_eq!(sweep.gas_limit, 21_000);
        assert_eq!(
            sweep.value,
            Amount::from_u128(1_000_000_000 * GWEI - 21_000 * 21 * GWEI)
        );
    }

    #[test]
    fn dust_high_gas_and_balances_eaten_by_gas_are_not_swept() {
        let below = Amount::from_u128(10_000_000 * GWEI - 1);
        assert_eq!(
            plan_native(&policy(), below, fees(1, 1)),
            Err(NoSweep::BelowMinimum)
        );
        let one = Amount::from_u128(GWEI * GWEI);
        assert_eq!(
            plan_native(&policy(), one, fees(100, 1)),
            Err(NoSweep::GasAboveCeiling {
                price: 101 * GWEI,
                ceiling: 100 * GWEI
            })
        );
        let mut tiny = policy();
        tiny.min_amount = Amount::from_u64(1);
        assert_eq!(
            plan_native(&tiny, Amount::from_u128(21_000 * 3 * GWEI), fees(1, 1)),
            Err(NoSweep::GasExceedsBalance)
        );
        assert_eq!(
            plan_native(&tiny, Amount::ZERO, fees(1, 1)),
            Err(NoSweep::BelowMinimum)
        );
    }

    #[test]
    fn a_replaced_native_sweep_sends_less_so_its_higher_gas_still_fits() {
        let balance = Amount::from_u128(1_000_000_000 * GWEI); // 1 ETH
        let stuck = plan_native(&policy(), balance, fees(10, 1)).unwrap();
        let bumped = Fees {
            max_fee_per_gas: 24 * GWEI,
            max_priority_fee_per_gas: 2 * GWEI,
        };
        let next = replan_native(&stuck, balance, bumped).unwrap();
        assert_eq!(
            next.value,
            Amount::from_u128(1_000_000_000 * GWEI - 21_000 * 24 * GWEI)
        );
        assert!(next.value < stuck.value);
        assert_eq!((next.gas_limit, next.max_fee_per_gas), (21_000, 24 * GWEI));
        assert_eq!(next.max_priority_fee_per_gas, 2 * GWEI);
        let more = Amount::from_u128(2_000_000_000 * GWEI);
        assert_eq!(
            replan_native(&stuck, more, bumped).unwrap().value,
            stuck.value,
            "a deposit arriving meanwhile is not swept by the replacement"
        );
        let little = Amount::from_u128(21_000 * 24 * GWEI);
        assert_eq!(
            replan_native(&stuck, little, bumped),
            Err(NoSweep::GasExceedsBalance)
        );
    }

    #[test]
    fn erc20_gas_is_funded_with_exactly_the_shortfall() {
        let tokens = Amount::from_u128(10_000_000 * GWEI);
        let needed = 65_000 * 21 * GWEI;
        assert_eq!(
            erc20_gas_funding(&policy(), tokens, Amount::ZERO, 65_000, fees(10, 1)),
            Ok(Some(Amount::from_u128(needed)))
        );
        assert_eq!(
            erc20_gas_funding(
                &policy(),
                tokens,
                Amount::from_u128(needed - 5),
                65_000,
                fees(10, 1)
            ),
            Ok(Some(Amount::from_u64(5)))
        );
        assert_eq!(
            erc20_gas_funding(&policy(), tokens, Amount::from_u128(needed), 65_000, fees(10, 1)),
            Ok(None)
        );
        assert_eq!(
            erc20_gas_funding(&policy(), Amount::from_u64(1), Amount::ZERO, 65_000, fees(10, 1)),
            Err(NoSweep::BelowMinimum)
        );
    }

    #[test]
    fn a_token_sweep_sends_every_token_and_funds_only_the_missing_gas() {
        let tokens = Amount::from_u64(25_500_000);
        let reserve = TOKEN_TRANSFER_GAS as u128 * 21 * GWEI;
        let sweep = plan_token(&policy_of(1), tokens, Amount::from_u128(reserve / 4), fees(10, 1)).unwrap();
        assert_eq!(sweep.amount, tokens, "the token pays no gas: all of it moves");
        assert_eq!(
            (sweep.gas_limit, sweep.max_fee_per_gas),
            (TOKEN_TRANSFER_GAS, 21 * GWEI)
        );
        assert_eq!(sweep.funding, Some(Amount::from_u128(reserve - reserve / 4)));
        let funded = plan_token(&policy_of(1), tokens, Amount::from_u128(reserve), fees(10, 1)).unwrap();
        assert_eq!(funded.funding, None, "enough coin left from an earlier funding");
        assert_eq!(
            plan_token(&policy_of(1), tokens, Amount::ZERO, fees(1000, 1)).map(|s| s.amount),
            Err(NoSweep::GasAboveCeiling {
                price: 1001 * GWEI,
                ceiling: 100 * GWEI
            })
        );
    }

    fn policy_of(min_atomic: u64) -> SweepPolicy {
        SweepPolicy {
            min_amount: Amount::from_u64(min_atomic),
            ..policy()
        }
    }

    #[test]
    fn the_gas_paid_moves_custody_to_fees_balanced() {
        let tx = gas_fee_booking("ETH", 21_000, 7 * GWEI).unwrap().unwrap();
        assert_eq!(tx.kind(), TxKind::Fee);
        let fee = Amount::from_u128(21_000 * 7 * GWEI);
        assert_eq!(
            tx.postings(),
            &[
                Posting::debit("platform:ETH:fees", Bucket::Available, fee),
                Posting::credit("platform:ETH:custody", Bucket::Available, fee),
            ]
        );
        assert_eq!(gas_fee_booking("ETH", 21_000, 0).unwrap(), None);
    }

    #[test]
    fn a_mined_sweeps_gas_is_one_fee_movement_keyed_by_the_sweep() {
        let json = r#"{"version":1,"assets":[{"symbol":"ETH","chain":"ethereum","decimals":18,"contract":null,
            "confirmations_required":1,"deposits_enabled":true,"withdrawals_enabled":true,
            "withdrawal_min":"1","withdrawal_max":"1000","daily_withdrawal_limit":"1000","review_threshold":"500"}]}"#;
        let eth = crate::asset::AssetCatalog::from_json(json)
            .unwrap()
            .get("ETH")
            .unwrap()
            .clone();
        let origin = || Origin {
            transaction_id: "fee-1".into(),
            now: "2026-12-04T10:00:00Z".parse().unwrap(),
            initiated_by: "sweeper".into(),
        };
        let mined = crate::gas::PaidGas {
            ledger_key: String::new(),
            tx_hash: Some("0x01"),
            to: "0xhot",
            gas_used: 21_000,
            effective_gas_price: 7 * GWEI,
        };
        let fee = plan_gas_fee(origin(), "ethereum:0xabc:0", mined.clone(), &eth)
            .unwrap()
            .unwrap();
        assert_eq!(fee.ledger_key, "sweep:ethereum:0xabc:0");
        assert_eq!(
            (fee.ledger.kind(), fee.state),
            (TxKind::Fee, crate::state::TxState::Confirmed)
        );
        assert_eq!(fee.amount, Amount::from_u128(21_000 * 7 * GWEI));
        assert_eq!(
            (fee.external_reference.as_deref(), fee.destination.as_deref()),
            (Some("0x01"), Some("0xhot"))
        );
        assert!(
            fee.participants.is_empty() && fee.events.is_empty(),
            "no user is touched"
        );
        let free = crate::gas::PaidGas {
            effective_gas_price: 0,
            ..mined
        };
        assert_eq!(
            plan_gas_fee(origin(), "ethereum:0xabc:0", free, &eth).unwrap(),
            None
        );
    }

    #[test]
    fn a_signed_sweep_is_never_signed_again() {
        use SweepState::*;
        let all = [Planned, Funding, Funded, Signed, Broadcasted, Confirmed, Failed];
        for state in all {
            assert_eq!(SweepState::parse(state.as_str()), Some(state));
            assert!(!state.can_become(Planned), "{state:?} → planned");
            assert!(
                !state.can_become(Signed) || matches!(state, Planned | Funded),
                "{state:?} → signed"
            );
            assert!(
                !state.can_become(Funding) || state == Planned,
                "{state:?} → funding"
            );
            if state.is_final() {
                assert!(all.iter().all(|n| !state.can_become(*n)));
            }
        }
        assert!(Signed.can_become(Broadcasted) && Broadcasted.can_become(Confirmed));
        assert!(Funding.can_become(Funded) && Funded.can_become(Signed));
        assert!(
            !Funding.can_become(Signed),
            "a sweep is signed only once its gas is confirmed"
        );
    }

    proptest! {
        /// A replacement never spends more than the address holds, nor sends more than the
        /// version it replaces, and offers exactly the replacement's fees.
        #[test]
        fn a_replaced_sweep_never_spends_more_than_the_address_holds(
            balance in 0u128..=u128::MAX / 4,
            old_value in 1u128..=u128::MAX / 4,
            max_fee in 0u128..=1_000 * GWEI,
            tip_share in 0u128..=100,
        ) {
            let stuck = NativeSweep {
                value: Amount::from_u128(old_value),
                gas_limit: NATIVE_TRANSFER_GAS,
                max_fee_per_gas: 1,
                max_priority_fee_per_gas: 1,
            };
            let fees = Fees { max_fee_per_gas: max_fee, max_priority_fee_per_gas: max_fee * tip_share / 100 };
            let balance = Amount::from_u128(balance);
            let reserve = gas_cost(NATIVE_TRANSFER_GAS, max_fee).unwrap();
            match replan_native(&stuck, balance, fees) {
                Ok(next) => {
                    prop_assert!(next.value.checked_add(reserve).unwrap() <= balance);
                    prop_assert!(next.value <= stuck.value && !next.value.is_zero());
                    prop_assert_eq!((next.max_fee_per_gas, next.max_priority_fee_per_gas),
                        (fees.max_fee_per_gas, fees.max_priority_fee_per_gas));
                    prop_assert_eq!(next.gas_limit, stuck.gas_limit);
                }
                Err(NoSweep::GasExceedsBalance) => prop_assert!(balance <= reserve),
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }

    proptest! {
        /// Whatever the balance and fees, a planned sweep plus the most its gas can cost never
        /// exceeds the balance, and it is never below the minimum.
        #[test]
        fn a_sweep_never_spends_more_than_the_address_holds(
            balance in 0u128..=u128::MAX / 4,
            base in 0u128..=200 * GWEI,
            tip in 0u128..=10 * GWEI,
        ) {
            let balance = Amount::from_u128(balance);
            let fees = SweepFees { base_fee_per_gas: base, max_priority_fee_per_gas: tip };
            match plan_native(&policy(), balance, fees) {
                Ok(sweep) => {
                    let reserve = gas_cost(sweep.gas_limit, sweep.max_fee_per_gas).unwrap();
                    prop_assert!(sweep.value.checked_add(reserve).unwrap() <= balance);
                    prop_assert!(!sweep.value.is_zero());
                    prop_assert!(balance >= policy().min_amount);
                    prop_assert!(base + tip <= policy().gas_price_ceiling_wei);
                    // what the chain charges at most (base + tip) leaves the rest as dust ≥ 0
                    let charged = gas_cost(sweep.gas_limit, base + tip).unwrap();
                    prop_assert!(charged <= reserve);
                }
                Err(NoSweep::BelowMinimum) => prop_assert!(balance < policy().min_amount),
                Err(NoSweep::GasAboveCeiling { .. }) => prop_assert!(base + tip > policy().gas_price_ceiling_wei),
                Err(NoSweep::GasExceedsBalance) => {
                    let reserve = gas_cost(21_000, 2 * base + tip).unwrap();
                    prop_assert!(balance <= reserve);
                }
                Err(NoSweep::Overflow) => prop_assert!(false, "no overflow in range"),
            }
        }
    }
}
