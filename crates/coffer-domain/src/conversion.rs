//! Conversion between a user's own wallets of two assets at a quoted rate (L11).
//!
//! A rate is exact: a decimal number of whole target units per whole source unit ("3000.25" USDT
//! per ETH), held as an integer numerator over a power of ten. No float is ever involved. The
//! amounts of a quote are computed in smallest units with the assets' decimals:
//!
//! ```text
//! to_atomic = from_atomic * rate_numerator * 10^to_decimals / (10^rate_scale * 10^from_decimals)
//! ```
//!
//! and rounded in the platform's favour: when the user names what they pay, they receive the
//! floor; when they name what they receive, they pay the ceiling. Worked examples (ETH has 18
//! decimals, USDT 6; rate 2985 USDT per ETH after the spread):
//!
//! - pay 0.000000000000000001 ETH (1 wei): 1 * 2985 * 10^6 / 10^18 = 0.000000002985 → floor 0
//!   USDT units: refused as too small to convert ([`ConversionRefusal::AmountTooSmall`]).
//! - pay 0.0000001 ETH (10^11 wei): 10^11 * 2985 * 10^6 / 10^18 = 298.5 → the user receives 298
//!   units (0.000298 USDT).
//! - receive 1 ETH (10^18 wei) for USDT at a rate of 0.000333 ETH per USDT (333 / 10^6):
//!   10^18 * 10^6 * 10^6 / (333 * 10^18) = 3003003003.003… units → the user pays 3003003004
//!   units (3003.003004 USDT).
//!
//! The spread is taken from the mid rate before any amount is computed: `rate = mid * (10000 -
//! spread_bps) / 10000`, still an exact decimal. Each conversion is two balanced ledger
//! transactions, one per asset, through the FX account of each asset
//! ([`crate::AccountKind::Fx`]): the user's source wallet → FX account of the source asset, and
//! FX account of the target asset → the user's target wallet.

use std::collections::BTreeMap;

use ruint::aliases::{U256, U512};

use crate::account::{platform_account_id, AccountKind, Bucket};
use crate::amount::{ledger_max, Amount};
use crate::asset::AssetConfig;
use crate::events::EventType;
use crate::ledger::{LedgerTransaction, Posting, TxKind};
use crate::movement::{participants, timeline, transaction_events, Movement, WalletRef};
use crate::plan::Origin;
use crate::state::TxState;

/// Most significant digits of a configured rate.
pub const RATE_DIGITS_MAX: usize = 30;
/// Most fraction digits of a configured rate.
pub const RATE_SCALE_MAX: u32 = 18;
/// The largest spread: 10% (1,000 basis points).
pub const SPREAD_BPS_MAX: u32 = 1_000;

/// Why a conversion cannot be quoted or planned. Each has a stable code (the API's `code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConversionRefusal {
    #[error("the source and target wallets hold the same asset")]
    SameAsset,
    #[error("both wallets must be your own")]
    NotOwnWallet,
    #[error("no rate is configured for this pair of assets")]
    PairUnavailable,
    #[error("the amount converts to less than one smallest unit of the other asset")]
    AmountTooSmall,
    #[error("the amount is above the ledger's limit")]
    AmountTooLarge,
}

impl ConversionRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            ConversionRefusal::SameAsset => "same_asset",
            ConversionRefusal::NotOwnWallet => "wallet_not_found",
            ConversionRefusal::PairUnavailable => "conversion_unavailable",
            ConversionRefusal::AmountTooSmall => "amount_too_small",
            ConversionRefusal::AmountTooLarge => "amount_too_large",
        }
    }
}

/// Why a configured rate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("a rate is a positive decimal number with at most {RATE_DIGITS_MAX} digits and {RATE_SCALE_MAX} decimals, got {0:?}")]
    Malformed(String),
    #[error("the spread is at most {SPREAD_BPS_MAX} basis points, got {0}")]
    Spread(u32),
    #[error("a pair is FROM:TO=RATE of two different assets, got {0:?}")]
    Pair(String),
}

/// Whole target units per whole source unit: `numerator / 10^scale`, positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    numerator: U256,
    scale: u32,
}

impl Rate {
    /// Parses a positive decimal string ("3000.25"), exactly.
    pub fn parse(text: &str) -> Result<Rate, RateError> {
        let malformed = || RateError::Malformed(text.to_string());
        let scale = text.split_once('.').map_or(0, |(_, f)| f.len());
        let digits = text.bytes().filter(u8::is_ascii_digit).count();
        if scale > RATE_SCALE_MAX as usize || digits > RATE_DIGITS_MAX {
            return Err(malformed());
        }
        let numerator = Amount::parse_positive(text, scale as u8).map_err(|_| malformed())?;
        Ok(Rate {
            numerator: numerator.atomic(),
            scale: scale as u32,
        })
    }

    /// The rate the user gets after the platform's spread: `self * (10000 - bps) / 10000`
    /// (exact: one more power of ten in the scale).
    pub fn with_spread(self, spread_bps: u32) -> Result<Rate, RateError> {
        if spread_bps > SPREAD_BPS_MAX {
            return Err(RateError::Spread(spread_bps));
        }
        let numerator = self.numerator * U256::from(10_000 - spread_bps);
        Ok(Rate {
            numerator,
            scale: self.scale + 4,
        }
        .normalized())
    }

    /// Without trailing zeros in the fraction.
    fn normalized(mut self) -> Rate {
        let ten = U256::from(10u8);
        while self.scale > 0 && (self.numerator % ten).is_zero() {
            self.numerator /= ten;
            self.scale -= 1;
        }
        self
    }

    /// The exact decimal string ("2985.1245").
    pub fn to_decimal_string(&self) -> String {
        Amount::from_atomic(self.numerator).to_decimal_string(self.scale as u8)
    }
}

/// Which side of a conversion the user named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixed {
    /// What the user pays, in the source asset's smallest units.
    From(Amount),
    /// What the user receives, in the target asset's smallest units.
    To(Amount),
}

/// What the user pays and receives, in smallest units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted {
    pub from_amount: Amount,
    pub to_amount: Amount,
}

fn pow10(exponent: u32) -> U512 {
    U512::from(10u8).pow(U512::from(exponent))
}

fn wide(amount: Amount) -> U512 {
    U512::from(amount.atomic())
}

fn narrow(value: U512) -> Result<Amount, ConversionRefusal> {
    let amount = U256::checked_from_limbs_slice(value.as_limbs()).map(Amount::from_atomic);
    amount
        .filter(|a| *a <= ledger_max())
        .ok_or(ConversionRefusal::AmountTooLarge)
}

/// The amounts of a conversion at `rate` between assets of `from_decimals` and `to_decimals`,
/// rounded in the platform's favour (see the module documentation).
pub fn quote(
    rate: &Rate,
    from_decimals: u8,
    to_decimals: u8,
    fixed: Fixed,
) -> Result<Quoted, ConversionRefusal> {
    // to = from * n * 10^td / 10^(s + fd); every operand is bounded (amounts < 10^33, n < 10^34,
    // decimals <= 77), so the products fit 512 bits; checked anyway.
    let scale = rate.scale + u32::from(from_decimals);
    let numerator = U512::from(rate.numerator)
        .checked_mul(pow10(u32::from(to_decimals)))
        .ok_or(ConversionRefusal::AmountTooLarge)?;
    let denominator = pow10(scale);
    let quoted = match fixed {
        Fixed::From(from) => {
            let product = wide(from)
                .checked_mul(numerator)
                .ok_or(ConversionRefusal::AmountTooLarge)?;
            // Floor: the user receives no more than the rate gives.
            let to = narrow(product / denominator)?;
            Quoted {
                from_amount: narrow(wide(from))?,
                to_amount: to,
            }
        }
        Fixed::To(to) => {
            let product = wide(to)
                .checked_mul(denominator)
                .ok_or(ConversionRefusal::AmountTooLarge)?;
            // Ceiling: the user pays at least what the rate asks.
            let from = product.div_ceil(numerator);
            Quoted {
                from_amount: narrow(from)?,
                to_amount: narrow(wide(to))?,
            }
        }
    };
    if quoted.from_amount.is_zero() || quoted.to_amount.is_zero() {
        return Err(ConversionRefusal::AmountTooSmall);
    }
    Ok(quoted)
}

/// A configured table of mid rates per ordered pair, and the spread taken from each.
///
/// Text form (`COFFER_FX_RATES`): comma-separated `FROM:TO=RATE`, e.g.
/// `ETH:USDT=3000,USDT:ETH=0.000333`. Each direction is its own entry (no inverse is derived:
/// an inverse is rarely a terminating decimal, and a desk quotes both sides anyway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateTable {
    mids: BTreeMap<(String, String), Rate>,
    spread_bps: u32,
}

impl RateTable {
    pub fn parse(text: &str, spread_bps: u32) -> Result<RateTable, RateError> {
        if spread_bps > SPREAD_BPS_MAX {
            return Err(RateError::Spread(spread_bps));
        }
        let mut mids = BTreeMap::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let pair_error = || RateError::Pair(entry.to_string());
            let (pair, rate) = entry.split_once('=').ok_or_else(pair_error)?;
            let (from, to) = pair.split_once(':').ok_or_else(pair_error)?;
            let (from, to) = (from.trim(), to.trim());
            if from.is_empty() || to.is_empty() || from == to {
                return Err(pair_error());
            }
            mids.insert((from.to_string(), to.to_string()), Rate::parse(rate.trim())?);
        }
        Ok(RateTable { mids, spread_bps })
    }

    /// The rate a user gets from `from` to `to` (the mid less the spread), if configured.
    pub fn rate(&self, from: &str, to: &str) -> Option<Rate> {
        let mid = self.mids.get(&(from.to_string(), to.to_string()))?;
        Some(mid.with_spread(self.spread_bps).expect("the spread was checked"))
    }

    pub fn spread_bps(&self) -> u32 {
        self.spread_bps
    }

    pub fn len(&self) -> usize {
        self.mids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mids.is_empty()
    }
}

/// The dev and test default of `COFFER_FX_RATES`: the two dev assets, both directions.
pub const DEV_RATES: &str = "ETH:USDT=3000,USDT:ETH=0.000333";
/// The default of `COFFER_FX_SPREAD_BPS`: 0.5%.
pub const DEV_SPREAD_BPS: u32 = 50;

/// The ledger key of a conversion leg: one per quote, so a quote converts at most once.
pub fn leg_ledger_key(quote_id: &str, leg: &str) -> String {
    format!("conversion:{quote_id}:{leg}")
}

/// The two legs of a conversion, one balanced ledger transaction per asset.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversionLegs {
    /// The user's source wallet → the FX account of the source asset.
    pub debit: Movement,
    /// The FX account of the target asset → the user's target wallet.
    pub credit: Movement,
}

/// Checks that a user may convert between two wallets: both theirs, different assets.
pub fn authorize(user_id: &str, from: &WalletRef, to: &WalletRef) -> Result<(), ConversionRefusal> {
    let own = |w: &WalletRef| w.user_id.as_deref() == Some(user_id);
    if !own(from) || !own(to) {
        return Err(ConversionRefusal::NotOwnWallet);
    }
    if from.asset == to.asset {
        return Err(ConversionRefusal::SameAsset);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn leg(
    origin: &Origin,
    transaction_id: String,
    ledger: LedgerTransaction,
    ledger_key: String,
    amount: Amount,
    asset: &AssetConfig,
    wallet: &WalletRef,
    outgoing: bool,
) -> Movement {
    let states = [
        (TxState::Created, "quote accepted"),
        (TxState::Confirmed, "conversion posted"),
    ];
    let mut movement = Movement {
        transaction_id,
        ledger,
        ledger_key,
        state: TxState::Confirmed,
        timeline: timeline(&states, origin.now),
        amount,
        decimals: asset.decimals,
        initiated_by: origin.initiated_by.clone(),
        from_wallet_id: outgoing.then(|| wallet.id.clone()),
        to_wallet_id: (!outgoing).then(|| wallet.id.clone()),
        external_reference: None,
        destination: None,
        original_transaction_id: None,
        participants: participants(&[wallet]),
        limits: Vec::new(),
        events: Vec::new(),
    };
    let summary = movement.summary();
    movement.events = transaction_events(
        EventType::TransactionCreated,
        &summary,
        &[wallet],
        Some(&movement.ledger),
    );
    movement
}

/// The legs of converting `quoted` from `from` to `to` under quote `quote_id`. `origin` gives
/// the debit leg's transaction id; `credit_transaction_id` the credit leg's.
#[allow(clippy::too_many_arguments)]
pub fn plan_conversion(
    origin: Origin,
    credit_transaction_id: String,
    quote_id: &str,
    from: &WalletRef,
    to: &WalletRef,
    quoted: Quoted,
    from_asset: &AssetConfig,
    to_asset: &AssetConfig,
) -> Result<ConversionLegs, ConversionRefusal> {
    let user_id = from.user_id.as_deref().ok_or(ConversionRefusal::NotOwnWallet)?;
    authorize(user_id, from, to)?;
    if from.asset != from_asset.symbol || to.asset != to_asset.symbol {
        return Err(ConversionRefusal::NotOwnWallet);
    }
    if quoted.from_amount.is_zero() || quoted.to_amount.is_zero() {
        return Err(ConversionRefusal::AmountTooSmall);
    }
    if quoted.from_amount > ledger_max() || quoted.to_amount > ledger_max() {
        return Err(ConversionRefusal::AmountTooLarge);
    }
    let fx_from = platform_account_id(&from_asset.symbol, AccountKind::Fx);
    let fx_to = platform_account_id(&to_asset.symbol, AccountKind::Fx);
    let debit_ledger = LedgerTransaction::new(
        TxKind::Conversion,
        &from_asset.symbol,
        vec![
            Posting::debit(&from.id, Bucket::Available, quoted.from_amount),
            Posting::credit(fx_from, Bucket::Available, quoted.from_amount),
        ],
    )
    .expect("two positive postings within the limit balance");
    let credit_ledger = LedgerTransaction::new(
        TxKind::Conversion,
        &to_asset.symbol,
        vec![
            Posting::debit(fx_to, Bucket::Available, quoted.to_amount),
            Posting::credit(&to.id, Bucket::Available, quoted.to_amount),
        ],
    )
    .expect("two positive postings within the limit balance");
    let debit = leg(
        &origin,
        origin.transaction_id.clone(),
        debit_ledger,
        leg_ledger_key(quote_id, "debit"),
        quoted.from_amount,
        from_asset,
        from,
        true,
    );
    let credit = leg(
        &origin,
        credit_transaction_id,
        credit_ledger,
        leg_ledger_key(quote_id, "credit"),
        quoted.to_amount,
        to_asset,
        to,
        false,
    );
    Ok(ConversionLegs { debit, credit })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asset::AssetCatalog;
    use proptest::prelude::*;

    fn rate(text: &str) -> Rate {
        Rate::parse(text).unwrap()
    }

    fn units(text: &str, decimals: u8) -> Amount {
        Amount::parse_decimal(text, decimals).unwrap()
    }

    #[test]
    fn rates_parse_exactly_and_refuse_what_is_not_a_positive_bounded_decimal() {
        assert_eq!(rate("3000.25").to_decimal_string(), "3000.25");
        assert_eq!(rate("0.000333").to_decimal_string(), "0.000333");
        for bad in [
            "",
            "0",
            "0.000",
            "-1",
            "1e3",
            "1.",
            ".5",
            "abc",
            "1.0000000000000000001",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Rate::parse(&"9".repeat(31)).is_err(), "31 digits accepted");
    }

    #[test]
    fn the_spread_is_taken_from_the_mid_exactly() {
        assert_eq!(rate("3000").with_spread(50).unwrap().to_decimal_string(), "2985");
        assert_eq!(
            rate("0.000333").with_spread(50).unwrap().to_decimal_string(),
            "0.000331335"
        );
        assert_eq!(rate("1").with_spread(0).unwrap(), rate("1"));
        assert_eq!(rate("1").with_spread(1001), Err(RateError::Spread(1001)));
    }

    #[test]
    fn the_worked_examples_of_the_documentation() {
        let eth_usdt = rate("2985");
        let one_wei = quote(&eth_usdt, 18, 6, Fixed::From(Amount::from_u64(1)));
        assert_eq!(one_wei, Err(ConversionRefusal::AmountTooSmall));
        let small = quote(&eth_usdt, 18, 6, Fixed::From(units("0.0000001", 18))).unwrap();
        assert_eq!(small.to_amount, Amount::from_u64(298), "298.5 floors to 298");
        let usdt_eth = rate("0.000333");
        let receive = quote(&usdt_eth, 6, 18, Fixed::To(units("1", 18))).unwrap();
        assert_eq!(
            receive.from_amount,
            units("3003.003004", 6),
            "3003.003003003… ceils"
        );
        assert_eq!(receive.to_amount, units("1", 18));
        // 1 ETH at 2985: exact, no rounding needed either way.
        let whole = quote(&eth_usdt, 18, 6, Fixed::From(units("1", 18))).unwrap();
        assert_eq!(whole.to_amount, units("2985", 6));
        let back = quote(&eth_usdt, 18, 6, Fixed::To(units("2985", 6))).unwrap();
        assert_eq!(back.from_amount, units("1", 18));
    }

    #[test]
    fn amounts_past_the_ledger_limit_are_refused() {
        let huge = quote(&rate("1000000"), 0, 18, Fixed::From(ledger_max()));
        assert_eq!(huge, Err(ConversionRefusal::AmountTooLarge));
    }

    #[test]
    fn the_table_reads_directed_pairs_and_refuses_bad_entries() {
        let table = RateTable::parse(DEV_RATES, DEV_SPREAD_BPS).unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table.rate("ETH", "USDT").unwrap().to_decimal_string(), "2985");
        assert_eq!(table.rate("USDT", "BTC"), None);
        for bad in ["ETH=1", "ETH:ETH=1", "ETH:USDT", ":USDT=1", "ETH:USDT=x"] {
            assert!(RateTable::parse(bad, 0).is_err(), "{bad:?} accepted");
        }
        assert!(RateTable::parse(DEV_RATES, 5000).is_err());
        assert!(RateTable::parse("", 0).unwrap().is_empty());
    }

    fn assets() -> (AssetConfig, AssetConfig) {
        let json = r#"{"version":1,"assets":[
            {"symbol":"ETH","chain":"ethereum","decimals":18,"contract":null,"confirmations_required":3,
             "deposits_enabled":true,"withdrawals_enabled":true,"withdrawal_min":"0.01","withdrawal_max":"10",
             "daily_withdrawal_limit":"20","review_threshold":"5"},
            {"symbol":"USDT","chain":"ethereum","decimals":6,"contract":"0x0000000000000000000000000000000000000001",
             "confirmations_required":3,"deposits_enabled":true,"withdrawals_enabled":true,"withdrawal_min":"1",
             "withdrawal_max":"1000","daily_withdrawal_limit":"2000","review_threshold":"500"}]}"#;
        let catalog = AssetCatalog::from_json(json).unwrap();
        (
            catalog.get("ETH").unwrap().clone(),
            catalog.get("USDT").unwrap().clone(),
        )
    }

    fn wallet(id: &str, user: &str, asset: &str) -> WalletRef {
        WalletRef {
            id: id.into(),
            user_id: Some(user.into()),
            asset: asset.into(),
        }
    }

    fn origin() -> Origin {
        Origin {
            transaction_id: "tx-debit".into(),
            now: "2026-12-03T09:00:00Z".parse().unwrap(),
            initiated_by: "alice".into(),
        }
    }

    #[test]
    fn a_conversion_is_one_balanced_transaction_per_asset_through_the_fx_accounts() {
        let (eth, usdt) = assets();
        let (a, b) = (wallet("a", "alice", "ETH"), wallet("b", "alice", "USDT"));
        let quoted = quote(&rate("2985"), 18, 6, Fixed::From(units("0.5", 18))).unwrap();
        let legs = plan_conversion(origin(), "tx-credit".into(), "q1", &a, &b, quoted, &eth, &usdt).unwrap();
        assert_eq!(legs.debit.ledger.asset(), "ETH");
        assert_eq!(legs.credit.ledger.asset(), "USDT");
        assert_eq!(legs.debit.ledger_key, "conversion:q1:debit");
        assert_eq!(legs.credit.transaction_id, "tx-credit");
        let deltas = |m: &Movement| -> Vec<(String, bool, String)> {
            m.ledger
                .balance_deltas()
                .into_iter()
                .map(|(id, _, d)| (id, d.negative, d.amount.to_string()))
                .collect()
        };
        let mut debit = deltas(&legs.debit);
        debit.sort();
        assert_eq!(
            debit,
            vec![
                ("a".into(), true, "500000000000000000".into()),
                ("platform:ETH:fx".into(), false, "500000000000000000".into()),
            ]
        );
        let mut credit = deltas(&legs.credit);
        credit.sort();
        assert_eq!(
            credit,
            vec![
                ("b".into(), false, "1492500000".into()),
                ("platform:USDT:fx".into(), true, "1492500000".into()),
            ]
        );
        assert_eq!(legs.debit.events[0].data["amount"], "-0.5");
        assert_eq!(legs.credit.events[0].data["amount"], "1492.5");
    }

    #[test]
    fn only_own_wallets_of_different_assets_convert() {
        let (eth, usdt) = assets();
        let a = wallet("a", "alice", "ETH");
        let quoted = Quoted {
            from_amount: Amount::from_u64(1),
            to_amount: Amount::from_u64(1),
        };
        let bobs = wallet("b", "bob", "USDT");
        let plan = |to: &WalletRef| plan_conversion(origin(), "t".into(), "q", &a, to, quoted, &eth, &usdt);
        assert_eq!(plan(&bobs), Err(ConversionRefusal::NotOwnWallet));
        let same = wallet("c", "alice", "ETH");
        assert_eq!(authorize("alice", &a, &same), Err(ConversionRefusal::SameAsset));
        assert_eq!(authorize("bob", &a, &bobs), Err(ConversionRefusal::NotOwnWallet));
    }

    fn decimals() -> impl Strategy<Value = u8> {
        prop_oneof![Just(0u8), Just(2), Just(6), Just(8), Just(18)]
    }

    proptest! {
        /// Whichever side the user names, the rate never favours them: what they receive is at
        /// most what they pay times the rate (exactly, in rationals), and naming the target side
        /// costs them the least source amount that still covers it.
        #[test]
        fn rounding_never_favours_the_user(
            numerator in 1u64..10_000_000_000,
            scale in 0u32..=12,
            fd in decimals(),
            td in decimals(),
            amount in 1u64..u64::MAX,
            fixed_from in any::<bool>(),
        ) {
            let rate = Rate { numerator: U256::from(numerator), scale };
            let fixed = if fixed_from { Fixed::From(Amount::from_u64(amount)) } else { Fixed::To(Amount::from_u64(amount)) };
            let Ok(q) = quote(&rate, fd, td, fixed) else { return Ok(()) };
            // to * 10^(s+fd) <= from * n * 10^td: the user never receives more than the rate gives.
            let lhs = wide(q.to_amount) * pow10(scale + u32::from(fd));
            let rhs = wide(q.from_amount) * U512::from(numerator) * pow10(u32::from(td));
            prop_assert!(lhs <= rhs, "user favoured: {q:?}");
            match fixed {
                // Floor: one more unit would be more than the rate gives.
                Fixed::From(from) => {
                    prop_assert_eq!(q.from_amount, from);
                    let more = (wide(q.to_amount) + U512::from(1u8)) * pow10(scale + u32::from(fd));
                    prop_assert!(more > rhs, "floored too far: {:?}", q);
                }
                // Ceiling: one unit less would not cover the target.
                Fixed::To(to) => {
                    prop_assert_eq!(q.to_amount, to);
                    let less = (wide(q.from_amount) - U512::from(1u8)) * U512::from(numerator) * pow10(u32::from(td));
                    prop_assert!(less < lhs, "ceiled too far: {:?}", q);
                }
            }
        }

        /// Both legs of every planned conversion balance, each in its own asset, and move exactly
        /// the quoted amounts.
        #[test]
        fn both_legs_balance(from in 1u64..u64::MAX, to in 1u64..u64::MAX) {
            let (eth, usdt) = assets();
            let (a, b) = (wallet("a", "alice", "ETH"), wallet("b", "alice", "USDT"));
            let quoted = Quoted { from_amount: Amount::from_u64(from), to_amount: Amount::from_u64(to) };
            let legs = plan_conversion(origin(), "t2".into(), "q", &a, &b, quoted, &eth, &usdt).unwrap();
            for (leg, amount) in [(&legs.debit, from), (&legs.credit, to)] {
                let mut sum: i128 = 0;
                for posting in leg.ledger.postings() {
                    let value = posting.amount.to_string().parse::<i128>().unwrap();
                    sum += if posting.side == crate::Side::Debit { -value } else { value };
                    prop_assert_eq!(value, i128::from(amount));
                }
                prop_assert_eq!(sum, 0);
            }
        }
    }
}
