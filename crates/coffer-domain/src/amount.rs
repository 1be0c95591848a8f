//! Amounts: unsigned integers in an asset's smallest unit, up to 2^256-1.
//!
//! On the wire amounts are decimal strings scaled by the asset's decimals ("1.5" ETH is
//! 1_500_000_000_000_000_000 wei). Parsing is exact and strict: no sign, no exponent, no
//! whitespace, no more fractional digits than the asset has. There are no floats anywhere.

use std::fmt;

use ruint::aliases::U256;
use thiserror::Error;

/// The largest number of decimals an asset may declare (2^256-1 has 78 digits).
pub const MAX_DECIMALS: u8 = 77;

/// The largest amount, in smallest units, that Coffer's ledger stores for any single balance or
/// posting: 10^33 - 1.
///
/// The MongoDB ledger keeps amounts as Decimal128, which is exact for integers of up to 34
/// significant digits, and sums them in the database. A cap one digit below that keeps every
/// balance, posting and partial sum of up to ten maximal postings exact. 10^33 smallest units is
/// 10^15 ETH (the supply is about 1.2 * 10^8) and above any ERC-20 supply in use today; an asset
/// that needs more is refused when it is configured, never rounded (see docs/amounts.md).
pub fn ledger_max() -> Amount {
    Amount(U256::from(10u64).pow(U256::from(33u64)) - U256::from(1u64))
}

/// A non-negative amount in an asset's smallest unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(U256);

/// Why a decimal amount string was refused. Each variant has a stable API code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AmountError {
    #[error("the amount is empty")]
    Empty,
    #[error("the amount is negative")]
    Negative,
    #[error("the amount is not a plain decimal number (digits and at most one '.')")]
    Malformed,
    #[error("the amount has more than {decimals} decimal places")]
    TooPrecise { decimals: u8 },
    #[error("the amount is larger than the largest representable amount")]
    TooLarge,
    #[error("the amount must be greater than zero")]
    Zero,
}

impl AmountError {
    /// The stable machine-readable code used in API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            AmountError::Empty => "amount_empty",
            AmountError::Negative => "amount_negative",
            AmountError::Malformed => "amount_malformed",
            AmountError::TooPrecise { .. } => "amount_too_precise",
            AmountError::TooLarge => "amount_too_large",
            AmountError::Zero => "amount_zero",
        }
    }
}

impl Amount {
    pub const ZERO: Amount = Amount(U256::ZERO);

    pub fn from_atomic(value: U256) -> Self {
        Amount(value)
    }

    pub fn from_u64(value: u64) -> Self {
        Amount(U256::from(value))
    }

    pub fn from_u128(value: u128) -> Self {
        Amount(U256::from(value))
    }

    pub fn atomic(&self) -> U256 {
        self.0
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    /// Parses the integer string of smallest units ("1500"), as stored.
    pub fn parse_atomic(text: &str) -> Result<Amount, AmountError> {
        Self::parse_decimal(text, 0)
    }

    /// Parses a decimal string scaled by `decimals`: `parse_decimal("1.5", 18)` is 1.5 * 10^18.
    pub fn parse_decimal(text: &str, decimals: u8) -> Result<Amount, AmountError> {
        assert!(
            decimals <= MAX_DECIMALS,
            "asset decimals are validated at configuration"
        );
        if text.is_empty() {
            return Err(AmountError::Empty);
        }
        if text.starts_with('-') {
            return Err(AmountError::Negative);
        }
        let (whole, fraction) = match text.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (text, None),
        };
        let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) {
            return Err(AmountError::Malformed);
        }
        let fraction = fraction.unwrap_or("");
        if text.ends_with('.') || !all_digits(fraction) {
            return Err(AmountError::Malformed);
        }
        if fraction.len() > decimals as usize {
            return Err(AmountError::TooPrecise { decimals });
        }
        let mut value = U256::ZERO;
        let padding = decimals as usize - fraction.len();
        let digits = whole
            .bytes()
            .chain(fraction.bytes())
            .chain(std::iter::repeat_n(b'0', padding));
        for digit in digits {
            value = value
                .checked_mul(U256::from(10u8))
                .and_then(|v| v.checked_add(U256::from(digit - b'0')))
                .ok_or(AmountError::TooLarge)?;
        }
        Ok(Amount(value))
    }

    /// Like [`Amount::parse_decimal`], and refuses zero: what every money movement needs.
    pub fn parse_positive(text: &str, decimals: u8) -> Result<Amount, AmountError> {
        let amount = Self::parse_decimal(text, decimals)?;
        if amount.is_zero() {
            return Err(AmountError::Zero);
        }
        Ok(amount)
    }

    /// Formats scaled by `decimals`, without trailing fractional zeros: 1.5 * 10^18 is "1.5".
    pub fn to_decimal_string(&self, decimals: u8) -> String {
        let digits = self.0.to_string();
        let decimals = decimals as usize;
        if decimals == 0 {
            return digits;
        }
        let padded = if digits.len() <= decimals {
            format!("{}{}", "0".repeat(decimals + 1 - digits.len()), digits)
        } else {
            digits
        };
        let (whole, fraction) = padded.split_at(padded.len() - decimals);
        let fraction = fraction.trim_end_matches('0');
        if fraction.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{fraction}")
        }
    }
}

impl fmt::Display for Amount {
    /// The integer number of smallest units.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Serialised as the integer string of smallest units, never as a JSON number.
impl serde::Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Amount::parse_atomic(&text).map_err(serde::de::Error::custom)
    }
}

/// A signed amount for displaying ledger entries: a debit shows as "-0.75".
pub fn signed_decimal_string(amount: &Amount, negative: bool, decimals: u8) -> String {
    let text = amount.to_decimal_string(decimals);
    if negative && !amount.is_zero() {
        format!("-{text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn max_u256_string() -> String {
        U256::MAX.to_string()
    }

    #[test]
    fn one_and_a_half_ether_is_exact() {
        let amount = Amount::parse_decimal("1.5", 18).unwrap();
        assert_eq!(amount.to_string(), "1500000000000000000");
        assert_eq!(amount.to_decimal_string(18), "1.5");
    }

    #[test]
    fn small_and_whole_amounts_format_without_noise() {
        assert_eq!(Amount::from_u64(1).to_decimal_string(18), "0.000000000000000001");
        assert_eq!(Amount::from_u64(2_000_000).to_decimal_string(6), "2");
        assert_eq!(Amount::ZERO.to_decimal_string(6), "0");
        assert_eq!(Amount::from_u64(42).to_decimal_string(0), "42");
    }

    #[test]
    fn bad_amounts_get_specific_errors() {
        let cases = [
            ("", AmountError::Empty),
            ("-1", AmountError::Negative),
            ("1e18", AmountError::Malformed),
            ("1.", AmountError::Malformed),
            (".5", AmountError::Malformed),
            (" 1", AmountError::Malformed),
            ("1.2.3", AmountError::Malformed),
            ("+1", AmountError::Malformed),
            ("0x10", AmountError::Malformed),
            ("1.0000001", AmountError::TooPrecise { decimals: 6 }),
        ];
        for (text, expected) in cases {
            assert_eq!(Amount::parse_decimal(text, 6), Err(expected), "input {text:?}");
        }
        assert_eq!(Amount::parse_positive("0.000", 6), Err(AmountError::Zero));
    }

    #[test]
    fn the_full_u256_range_parses_and_one_more_is_too_large() {
        let max = max_u256_string();
        assert_eq!(Amount::parse_atomic(&max).unwrap().atomic(), U256::MAX);
        let above = format!("{}6", &max[..max.len() - 1]); // last digit of 2^256-1 is 5
        assert_eq!(Amount::parse_atomic(&above), Err(AmountError::TooLarge));
        assert!(Amount::parse_decimal("1", 77).is_ok()); // 10^77 < 2^256 ≈ 1.16 * 10^77
        assert_eq!(Amount::parse_decimal("12", 77), Err(AmountError::TooLarge));
    }

    #[test]
    fn ledger_max_has_33_nines() {
        assert_eq!(ledger_max().to_string(), "9".repeat(33));
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(limbs in any::<[u64; 4]>(), decimals in 0u8..=30) {
            let amount = Amount::from_atomic(U256::from_limbs(limbs));
            let text = amount.to_decimal_string(decimals);
            prop_assert_eq!(Amount::parse_decimal(&text, decimals), Ok(amount));
        }

        #[test]
        fn parse_never_panics_and_accepts_only_digits(text in "\\PC{0,90}", decimals in 0u8..=18) {
            if Amount::parse_decimal(&text, decimals).is_ok() {
                prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
            }
        }
    }
}
