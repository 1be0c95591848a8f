//! Amounts in MongoDB: IEEE 754-2008 Decimal128 (BID encoding) with exponent 0.
//!
//! Decimal128 is exact for integers of up to 34 digits and MongoDB adds, compares and sums it
//! exactly, so the database can enforce `available >= amount` in an update filter and the
//! reconciler can `$sum` a ledger. Coffer caps every stored amount at 10^33 - 1 (see
//! `coffer_domain::amount::ledger_max`), so values here always fit the 113-bit coefficient.

use coffer_domain::Amount;
use mongodb::bson::Decimal128;
use ruint::aliases::U256;

const EXPONENT_BIAS: i32 = 6176;
const SIGN_BIT: u128 = 1 << 127;
const COEFFICIENT_BITS: u32 = 113;

/// A signed amount as Decimal128 (negative for debits).
pub fn to_decimal(amount: &Amount, negative: bool) -> Decimal128 {
    let coefficient =
        u128::try_from(amount.atomic()).expect("stored amounts are capped at 10^33 - 1 by the domain");
    assert!(
        coefficient < (1u128 << COEFFICIENT_BITS),
        "amount exceeds the Decimal128 coefficient"
    );
    let mut bits = ((EXPONENT_BIAS as u128) << COEFFICIENT_BITS) | coefficient;
    if negative && coefficient != 0 {
        bits |= SIGN_BIT;
    }
    Decimal128::from_bytes(bits.to_le_bytes())
}

/// Why a stored Decimal128 is not an integer amount. Always a bug or tampering, never user input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored decimal is not an exact integer amount: {0}")]
pub struct DecodeError(pub String);

/// Reads a Decimal128 back as (magnitude, negative). Accepts any exponent as long as the value
/// is an integer (MongoDB may return e.g. 1500E-1 after arithmetic), refuses NaN and infinities.
pub fn from_decimal(value: &Decimal128) -> Result<(Amount, bool), DecodeError> {
    let bits = u128::from_le_bytes(value.bytes());
    let negative = bits & SIGN_BIT != 0;
    let combination = (bits >> 122) & 0b11111;
    if combination >= 0b11110 {
        return Err(DecodeError("NaN or infinity".into()));
    }
    let (exponent, coefficient) = if (bits >> 125) & 0b11 == 0b11 {
        // Large-coefficient form: never canonical for values below 2^113.
        return Err(DecodeError("non-canonical coefficient".into()));
    } else {
        (
            ((bits >> COEFFICIENT_BITS) & 0x3FFF) as i32 - EXPONENT_BIAS,
            bits & ((1u128 << COEFFICIENT_BITS) - 1),
        )
    };
    let mut value = U256::from(coefficient);
    let ten = U256::from(10u8);
    if exponent > 0 {
        for _ in 0..exponent {
            value = value
                .checked_mul(ten)
                .ok_or_else(|| DecodeError("too large".into()))?;
        }
    } else {
        for _ in 0..(-exponent) {
            if !(value % ten).is_zero() {
                return Err(DecodeError("fractional value".into()));
            }
            value /= ten;
        }
    }
    Ok((Amount::from_atomic(value), negative && !value.is_zero()))
}

/// Reads a stored balance that must not be negative (a user's available/held/pending).
pub fn non_negative(value: &Decimal128) -> Result<Amount, DecodeError> {
    match from_decimal(value)? {
        (amount, false) => Ok(amount),
        (amount, true) => Err(DecodeError(format!("negative balance -{amount}"))),
    }
}

pub fn zero() -> Decimal128 {
    to_decimal(&Amount::ZERO, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_and_one_have_the_canonical_encoding() {
        // 0E+0 is 0x3040_0000_0000_0000_0000_0000_0000_0000 in BID.
        assert_eq!(u128::from_le_bytes(zero().bytes()), 0x3040u128 << 112);
        let one = to_decimal(&Amount::from_u64(1), true);
        assert_eq!(u128::from_le_bytes(one.bytes()), (0xB040u128 << 112) | 1);
        assert_eq!(one.to_string(), "-1");
    }

    #[test]
    fn values_with_other_exponents_decode_when_integral() {
        // 15E+1 = 150
        let bits = (((EXPONENT_BIAS + 1) as u128) << COEFFICIENT_BITS) | 15;
        let decoded = from_decimal(&Decimal128::from_bytes(bits.to_le_bytes())).unwrap();
        assert_eq!(decoded, (Amount::from_u64(150), false));
        // 15E-1 = 1.5 is not an amount
        let bits = (((EXPONENT_BIAS - 1) as u128) << COEFFICIENT_BITS) | 15;
        assert!(from_decimal(&Decimal128::from_bytes(bits.to_le_bytes())).is_err());
    }

    proptest! {
        #[test]
        fn round_trips_up_to_the_ledger_limit(value in 0u128..1_000_000_000_000_000_000_000_000_000_000_000u128, negative: bool) {
            let amount = Amount::from_atomic(U256::from(value));
            let decoded = from_decimal(&to_decimal(&amount, negative)).unwrap();
            prop_assert_eq!(decoded, (amount, negative && value != 0));
        }
    }
}

/// Serde for bytes stored as BSON binary (not an array of numbers).
pub mod binary {
    use mongodb::bson::{spec::BinarySubtype, Binary};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        Binary {
            subtype: BinarySubtype::Generic,
            bytes: bytes.to_vec(),
        }
        .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        Ok(Binary::deserialize(deserializer)?.bytes)
    }
}

/// A time as the store keeps it: UTC, millisecond precision (what a BSON date holds).
pub type Time = chrono::DateTime<chrono::Utc>;

/// Now, truncated to the millisecond, so that a time read back equals the time written.
pub fn now() -> Time {
    from_millis(chrono::Utc::now().timestamp_millis())
}

/// The time `millis` milliseconds after the Unix epoch.
pub fn from_millis(millis: i64) -> Time {
    chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

/// A [`Time`] as a BSON date (for filters and updates inside the store).
pub(crate) fn bson_time(time: &Time) -> mongodb::bson::DateTime {
    mongodb::bson::DateTime::from_millis(time.timestamp_millis())
}

/// Serde for a [`Time`] stored as a BSON date.
pub mod time {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(time: &super::Time, serializer: S) -> Result<S::Ok, S::Error> {
        super::bson_time(time).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<super::Time, D::Error> {
        let date = mongodb::bson::DateTime::deserialize(deserializer)?;
        Ok(super::from_millis(date.timestamp_millis()))
    }
}

/// Serde for an optional [`Time`] stored as a BSON date or null.
pub mod time_opt {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(time: &Option<super::Time>, serializer: S) -> Result<S::Ok, S::Error> {
        time.as_ref().map(super::bson_time).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<super::Time>, D::Error> {
        let date = Option::<mongodb::bson::DateTime>::deserialize(deserializer)?;
        Ok(date.map(|d| super::from_millis(d.timestamp_millis())))
    }
}

/// Serde for a signed balance stored as Decimal128 (see the module documentation).
pub mod signed {
    use coffer_domain::SignedAmount;
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &SignedAmount, serializer: S) -> Result<S::Ok, S::Error> {
        super::to_decimal(&value.magnitude, value.negative).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SignedAmount, D::Error> {
        let decimal = mongodb::bson::Decimal128::deserialize(deserializer)?;
        let (magnitude, negative) = super::from_decimal(&decimal).map_err(D::Error::custom)?;
        Ok(SignedAmount::new(magnitude, negative))
    }
}
