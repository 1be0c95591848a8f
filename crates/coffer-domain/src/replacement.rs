//! Replacing a stuck withdrawal (C7, issue 17 item 3): the pure rules, no IO.
//!
//! A broadcast EIP-1559 transaction that is not mined within its asset's time is re-signed with
//! the **same nonce** and both fee fields raised by at least what nodes require of a replacement
//! (geth and others: +10 %; Coffer asks 12.5 %, rounded up), up to a cap per withdrawal. Because
//! every version spends the same nonce, at most one of them can ever be mined: that is what makes
//! "exactly one settles" a property of the chain, not of Coffer's bookkeeping. A cancellation is
//! the same replacement with a zero-value transfer to the hot wallet itself.
//!
//! The broadcaster (`coffer_chain::broadcaster`) applies it: every version is stored on the
//! withdrawal before it is sent, and whichever version is mined decides (docs/chain.md, "Stuck
//! withdrawals").

use std::time::Duration;

use thiserror::Error;

/// The smallest raise of each fee field a replacement makes, in per-mille (125 = 12.5 %).
pub const BUMP_PER_MILLE_MIN: u128 = 125;
/// The most versions (the original and its replacements) one withdrawal may have.
pub const VERSIONS_MAX: usize = 8;

/// The two fee fields of an EIP-1559 transaction, in wei per gas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fees {
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

/// Limits of replacement, from the asset's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplacementPolicy {
    /// How long a broadcast version may stay unmined before it is replaced.
    pub stuck_after: Duration,
    /// The highest `max_fee_per_gas` any version may offer.
    pub max_fee_per_gas_cap: u128,
}

/// Why no replacement is made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoReplacement {
    #[error("the transaction is not stuck yet")]
    NotStuck,
    #[error("the required fee raise would pass the cap of {cap} wei per gas")]
    AtCap { cap: u128 },
    #[error("the withdrawal has {VERSIONS_MAX} versions already")]
    TooManyVersions,
    #[error("the fees are malformed (priority above the maximum)")]
    Malformed,
}

/// `value` raised by at least [`BUMP_PER_MILLE_MIN`], rounded up, and by at least 1 wei.
pub fn bumped(value: u128) -> Option<u128> {
    let raise = value.checked_mul(BUMP_PER_MILLE_MIN)?.div_ceil(1000).max(1);
    value.checked_add(raise)
}

/// The fees of the next version of a withdrawal whose latest version, offering `latest`, was
/// broadcast `unmined_for` ago; `suggested` is what the node advises now (a replacement offers
/// the higher of the bump and the suggestion). `versions` counts the versions signed so far.
pub fn next_fees(
    policy: &ReplacementPolicy,
    latest: Fees,
    suggested: Fees,
    unmined_for: Duration,
    versions: usize,
) -> Result<Fees, NoReplacement> {
    if latest.max_priority_fee_per_gas > latest.max_fee_per_gas {
        return Err(NoReplacement::Malformed);
    }
    if unmined_for < policy.stuck_after {
        return Err(NoReplacement::NotStuck);
    }
    if versions >= VERSIONS_MAX {
        return Err(NoReplacement::TooManyVersions);
    }
    let at_cap = NoReplacement::AtCap {
        cap: policy.max_fee_per_gas_cap,
    };
    let max_fee = bumped(latest.max_fee_per_gas)
        .ok_or(at_cap.clone())?
        .max(suggested.max_fee_per_gas);
    let priority = bumped(latest.max_priority_fee_per_gas)
        .ok_or(at_cap.clone())?
        .max(suggested.max_priority_fee_per_gas)
        .min(max_fee);
    // Clamping the priority to the maximum may undo its bump: then the maximum must rise more.
    if max_fee > policy.max_fee_per_gas_cap || !is_valid_replacement(latest, max_fee, priority) {
        return Err(at_cap);
    }
    Ok(Fees {
        max_fee_per_gas: max_fee,
        max_priority_fee_per_gas: priority,
    })
}

/// Whether `max_fee` and `priority` raise both of `latest`'s fields by the minimum.
pub fn is_valid_replacement(latest: Fees, max_fee: u128, priority: u128) -> bool {
    let enough = |old: u128, new: u128| bumped(old).is_some_and(|min| new >= min);
    enough(latest.max_fee_per_gas, max_fee) && enough(latest.max_priority_fee_per_gas, priority)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GWEI: u128 = 1_000_000_000;

    fn policy() -> ReplacementPolicy {
        ReplacementPolicy {
            stuck_after: Duration::from_secs(600),
            max_fee_per_gas_cap: 500 * GWEI,
        }
    }

    fn fees(max: u128, priority: u128) -> Fees {
        Fees {
            max_fee_per_gas: max,
            max_priority_fee_per_gas: priority,
        }
    }

    #[test]
    fn a_stuck_withdrawal_is_bumped_by_at_least_an_eighth_on_both_fields() {
        let next = next_fees(
            &policy(),
            fees(40 * GWEI, 2 * GWEI),
            fees(0, 0),
            Duration::from_secs(601),
            1,
        )
        .unwrap();
        assert_eq!(next, fees(45 * GWEI, 2_250_000_000));
        assert_eq!(bumped(1), Some(2), "at least one wei");
        assert_eq!(bumped(9), Some(11), "rounded up: 9 * 1.125 = 10.125");
    }

    #[test]
    fn the_node_suggestion_wins_when_it_is_higher() {
        let next = next_fees(
            &policy(),
            fees(40 * GWEI, 2 * GWEI),
            fees(90 * GWEI, 3 * GWEI),
            Duration::from_secs(700),
            1,
        )
        .unwrap();
        assert_eq!(next, fees(90 * GWEI, 3 * GWEI));
    }

    #[test]
    fn nothing_is_replaced_before_its_time_past_the_cap_or_too_often() {
        let latest = fees(40 * GWEI, 2 * GWEI);
        let early = next_fees(&policy(), latest, fees(0, 0), Duration::from_secs(599), 1);
        assert_eq!(early, Err(NoReplacement::NotStuck));
        let near_cap = fees(450 * GWEI, 2 * GWEI);
        let capped = next_fees(&policy(), near_cap, fees(0, 0), Duration::from_secs(601), 1);
        assert_eq!(capped, Err(NoReplacement::AtCap { cap: 500 * GWEI }));
        let many = next_fees(
            &policy(),
            latest,
            fees(0, 0),
            Duration::from_secs(601),
            VERSIONS_MAX,
        );
        assert_eq!(many, Err(NoReplacement::TooManyVersions));
    }

    proptest! {
        #[test]
        fn every_replacement_is_one_nodes_accept_and_stays_under_the_cap(
            max in 1u128..400_000_000_000u128,
            priority_share in 0u128..=100,
            suggested_max in 0u128..600_000_000_000u128,
            suggested_priority in 0u128..10_000_000_000u128,
        ) {
            let latest = fees(max, max * priority_share / 100);
            let suggested = fees(suggested_max, suggested_priority);
            if let Ok(next) = next_fees(&policy(), latest, suggested, Duration::from_secs(601), 1) {
                prop_assert!(next.max_fee_per_gas * 1000 >= latest.max_fee_per_gas * 1125);
                prop_assert!(next.max_priority_fee_per_gas * 1000 >= latest.max_priority_fee_per_gas * 1125);
                prop_assert!(next.max_priority_fee_per_gas <= next.max_fee_per_gas);
                prop_assert!(next.max_fee_per_gas <= policy().max_fee_per_gas_cap);
            }
        }
    }
}
