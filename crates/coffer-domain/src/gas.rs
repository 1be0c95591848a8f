//! Gas the platform pays on chain, booked as a fee: what a mined transaction's receipt reports
//! (`gasUsed × effectiveGasPrice`) leaves custody of the chain's coin against its fees account,
//! once, under a ledger key naming what paid it. Used for sweeps and their gas funding
//! ([`crate::sweep::plan_gas_fee`]) and for token withdrawals, whose gas is paid in the coin
//! while the withdrawal itself settles in the token ([`plan_withdrawal_gas`]).

use crate::asset::AssetConfig;
use crate::ledger::LedgerError;
use crate::movement::Movement;
use crate::plan::{movement, Origin};
use crate::state::TxState;
use crate::sweep::gas_fee_booking;

/// A mined transaction the platform paid gas for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidGas<'a> {
    /// Books it at most once: `sweep:<id>`, `withdrawal-gas:<id>` (set by [`plan_withdrawal_gas`]
    /// and [`crate::sweep::plan_gas_fee`] from what paid it).
    pub ledger_key: String,
    pub tx_hash: Option<&'a str>,
    /// Where the transaction went (the fee's destination, for people reading the books).
    pub to: &'a str,
    pub gas_used: u64,
    pub effective_gas_price: u128,
}

/// The `fee` movement of `paid` in `coin` (the chain's coin), final at once; `None` when the
/// chain charged nothing (a zero base fee and tip on a dev chain). No user is touched.
pub fn plan_paid_gas(
    origin: Origin,
    paid: &PaidGas<'_>,
    coin: &AssetConfig,
) -> Result<Option<Movement>, LedgerError> {
    let Some(ledger) = gas_fee_booking(&coin.symbol, paid.gas_used, paid.effective_gas_price)? else {
        return Ok(None);
    };
    let amount = ledger.postings()[0].amount;
    let states = [(TxState::Created, "mined"), (TxState::Confirmed, "gas booked")];
    let mut booked = movement(
        origin,
        ledger,
        paid.ledger_key.clone(),
        &states,
        amount,
        coin,
        None,
        None,
    );
    booked.external_reference = paid.tx_hash.map(str::to_string);
    booked.destination = Some(paid.to.to_string());
    Ok(Some(booked))
}

/// The coin gas of mined token withdrawal `withdrawal_id` (settled or reverted: the chain
/// charged it either way), under `withdrawal-gas:<id>`.
pub fn plan_withdrawal_gas(
    origin: Origin,
    withdrawal_id: &str,
    paid: PaidGas<'_>,
    coin: &AssetConfig,
) -> Result<Option<Movement>, LedgerError> {
    let paid = PaidGas {
        ledger_key: format!("withdrawal-gas:{withdrawal_id}"),
        ..paid
    };
    plan_paid_gas(origin, &paid, coin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amount::Amount;
    use crate::ledger::{Posting, TxKind};
    use crate::Bucket;

    fn eth() -> AssetConfig {
        let json = r#"{"version":1,"assets":[{"symbol":"ETH","chain":"ethereum","decimals":18,"contract":null,
            "confirmations_required":1,"deposits_enabled":true,"withdrawals_enabled":true,
            "withdrawal_min":"1","withdrawal_max":"1000","daily_withdrawal_limit":"1000","review_threshold":"500"}]}"#;
        crate::asset::AssetCatalog::from_json(json)
            .unwrap()
            .get("ETH")
            .unwrap()
            .clone()
    }

    #[test]
    fn a_token_withdrawals_gas_is_booked_once_in_the_coin() {
        let origin = Origin {
            transaction_id: "fee-9".into(),
            now: "2026-12-04T10:00:00Z".parse().unwrap(),
            initiated_by: "broadcaster".into(),
        };
        let paid = PaidGas {
            ledger_key: String::new(),
            tx_hash: Some("0x02"),
            to: "0xtoken",
            gas_used: 51_000,
            effective_gas_price: 3,
        };
        let fee = plan_withdrawal_gas(origin, "w-1", paid, &eth()).unwrap().unwrap();
        assert_eq!(fee.ledger_key, "withdrawal-gas:w-1");
        assert_eq!(
            (fee.ledger.kind(), fee.ledger.asset(), fee.state),
            (TxKind::Fee, "ETH", TxState::Confirmed)
        );
        assert_eq!(
            fee.ledger.postings(),
            &[
                Posting::debit("platform:ETH:fees", Bucket::Available, Amount::from_u64(153_000)),
                Posting::credit(
                    "platform:ETH:custody",
                    Bucket::Available,
                    Amount::from_u64(153_000)
                ),
            ]
        );
        assert!(
            fee.participants.is_empty() && fee.events.is_empty(),
            "no user is touched"
        );
    }
}
