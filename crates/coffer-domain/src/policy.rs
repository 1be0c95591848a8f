//! The money-out risk policy (S3, S8), one set of rules for withdrawals and outgoing transfers:
//! the owner's risk state (frozen, verification tier), a recent password login, the per-user daily
//! velocity (scaled by the tier), the review threshold and the first-time-recipient cap. Pure:
//! callers pass in what they read (the user's risk, the login time, whether the pair has moved
//! money before) and get a typed [`Refusal`] or what to do.

use chrono::{DateTime, Utc};
use ruint::aliases::U256;
use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::asset::TransferPolicy;
use crate::movement::LimitCharge;
use crate::plan::Refusal;

/// A user's verification tier, as the KYC provider sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Not verified: money may come in, nothing goes out.
    Unverified,
    /// Verified with reduced limits (a percentage of the asset's, configured).
    Basic,
    /// Fully verified: the asset's limits.
    Full,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Unverified, Tier::Basic, Tier::Full];

    pub fn as_str(&self) -> &'static str {
        match self {
            Tier::Unverified => "unverified",
            Tier::Basic => "basic",
            Tier::Full => "full",
        }
    }

    pub fn parse(text: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// The most risk flags a user carries, and the longest flag.
pub const RISK_FLAGS_MAX: usize = 16;
pub const RISK_FLAG_CHARS_MAX: usize = 32;

/// What the platform knows of a user's risk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskProfile {
    pub tier: Tier,
    /// Provider or staff labels (`pep`, `sanctions_hit`), lower-case; informative only.
    pub flags: Vec<String>,
    /// Staff froze the account: nothing goes out until an admin unfreezes it.
    pub frozen: bool,
}

impl RiskProfile {
    /// The profile of a user nobody has assessed yet.
    pub fn default_for(tier: Tier) -> Self {
        RiskProfile {
            tier,
            flags: Vec::new(),
            frozen: false,
        }
    }
}

/// Whether a risk flag is well formed: 1 to 32 of a-z 0-9 _.
pub fn valid_flag(flag: &str) -> bool {
    (1..=RISK_FLAG_CHARS_MAX).contains(&flag.len())
        && flag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// How limits scale with the tier: percentages of the asset's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierLimits {
    /// The share of the asset's daily limits a `basic` user gets (0 to 100).
    pub basic_percent: u8,
}

impl Default for TierLimits {
    fn default() -> Self {
        TierLimits { basic_percent: 10 }
    }
}

impl TierLimits {
    /// `limit` as it applies to a user of `tier`.
    pub fn scale(&self, limit: Amount, tier: Tier) -> Amount {
        let percent = match tier {
            Tier::Unverified => 0,
            Tier::Basic => u64::from(self.basic_percent.min(100)),
            Tier::Full => 100,
        };
        // Limits are at most the ledger's maximum (10^34), so the product cannot overflow 256 bits.
        let scaled = limit.atomic() * U256::from(percent) / U256::from(100u64);
        Amount::from_atomic(scaled)
    }
}

/// The owner may move money out: not frozen, and verified.
pub fn authorize_risk(risk: &RiskProfile) -> Result<(), Refusal> {
    if risk.frozen {
        return Err(Refusal::AccountFrozen);
    }
    if risk.tier == Tier::Unverified {
        return Err(Refusal::VerificationRequired);
    }
    Ok(())
}

/// The login is recent enough: at most `window_seconds` since the password was proved.
pub fn authorize_recent_login(seconds_since_login: i64, window_seconds: i64) -> Result<(), Refusal> {
    if seconds_since_login > window_seconds {
        return Err(Refusal::ReauthenticationRequired);
    }
    Ok(())
}

/// What the caller proved before a withdrawal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WithdrawalAuthority {
    /// The request names a trusted device of the caller.
    pub device_trusted: bool,
    /// Seconds since the caller's last password login (refreshes keep the login time).
    pub seconds_since_login: i64,
    /// How recent a login a withdrawal needs.
    pub reauthentication_window_seconds: i64,
}

/// The checks that come before anything about the withdrawal itself is read.
pub fn authorize_withdrawal(authority: &WithdrawalAuthority) -> Result<(), Refusal> {
    if !authority.device_trusted {
        return Err(Refusal::DeviceNotTrusted);
    }
    authorize_recent_login(
        authority.seconds_since_login,
        authority.reauthentication_window_seconds,
    )
}

/// The caller's side of an outgoing transfer, as read before planning it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferContext {
    pub risk: RiskProfile,
    pub seconds_since_login: i64,
    pub reauthentication_window_seconds: i64,
    /// The sender has never completed a transfer to this recipient.
    pub first_time_recipient: bool,
    pub tiers: TierLimits,
}

/// What the policy decided for a transfer that may go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferDecision {
    /// Held for a reviewer instead of posted at once.
    pub review: bool,
    /// The daily velocity charge, when the asset has a daily limit.
    pub limit: Option<LimitCharge>,
}

/// The daily velocity counter key of a user's outgoing transfers of one wallet (the wallet is
/// the user's one wallet of the asset).
pub fn transfer_velocity(wallet_id: &str, amount: Amount, limit: Amount, now: DateTime<Utc>) -> LimitCharge {
    LimitCharge::daily(&format!("transfer:{wallet_id}"), amount, limit, now)
}

/// Applies the transfer policy of an asset to an outgoing transfer of `amount` from `wallet_id`.
pub fn decide_transfer(
    policy: &TransferPolicy,
    context: &TransferContext,
    wallet_id: &str,
    amount: Amount,
    now: DateTime<Utc>,
) -> Result<TransferDecision, Refusal> {
    authorize_risk(&context.risk)?;
    if policy.reauthentication_above.is_some_and(|above| amount > above) {
        authorize_recent_login(
            context.seconds_since_login,
            context.reauthentication_window_seconds,
        )?;
    }
    if context.first_time_recipient && policy.first_recipient_max.is_some_and(|max| amount > max) {
        return Err(Refusal::FirstRecipientLimit);
    }
    let limit = policy.daily_limit.map(|limit| {
        let scaled = context.tiers.scale(limit, context.risk.tier);
        transfer_velocity(wallet_id, amount, scaled, now)
    });
    let review = policy
        .review_threshold
        .is_some_and(|threshold| amount > threshold);
    Ok(TransferDecision { review, limit })
}

/// How many different staff members must approve a decision on `amount`: two above `threshold`
/// (an asset's `two_person_review_above` or `two_person_adjustment_above`), otherwise one.
pub fn approvals_required(amount: Amount, threshold: Option<Amount>) -> usize {
    if threshold.is_some_and(|threshold| amount > threshold) {
        2
    } else {
        1
    }
}

/// What an approval does: it is the first of two and is only recorded, or it executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalStep {
    Record,
    Execute,
}

/// The two-person rule (issue 13 item 6): `approver` may not own an account the movement pays
/// into or out of (`owners`), nor give a second approval after their own first (`given`, the
/// staff ids recorded so far); the approval that reaches `required` executes.
pub fn next_approval(
    required: usize,
    given: &[String],
    approver: &str,
    owners: &[&str],
) -> Result<ApprovalStep, Refusal> {
    if owners.contains(&approver) {
        return Err(Refusal::OwnAccount);
    }
    if given.iter().any(|g| g == approver) {
        return Err(Refusal::SameApprover);
    }
    if given.len() + 1 >= required {
        Ok(ApprovalStep::Execute)
    } else {
        Ok(ApprovalStep::Record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(n: u64) -> Amount {
        Amount::from_u64(n)
    }

    fn context(tier: Tier, seconds_since_login: i64, first_time_recipient: bool) -> TransferContext {
        TransferContext {
            risk: RiskProfile::default_for(tier),
            seconds_since_login,
            reauthentication_window_seconds: 600,
            first_time_recipient,
            tiers: TierLimits { basic_percent: 10 },
        }
    }

    fn policy() -> TransferPolicy {
        TransferPolicy {
            reauthentication_above: Some(units(100)),
            daily_limit: Some(units(1000)),
            review_threshold: Some(units(500)),
            first_recipient_max: Some(units(50)),
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-12-01T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn frozen_and_unverified_users_move_nothing_out() {
        let mut frozen = RiskProfile::default_for(Tier::Full);
        frozen.frozen = true;
        assert_eq!(authorize_risk(&frozen), Err(Refusal::AccountFrozen));
        let unverified = RiskProfile::default_for(Tier::Unverified);
        assert_eq!(authorize_risk(&unverified), Err(Refusal::VerificationRequired));
        assert_eq!(authorize_risk(&RiskProfile::default_for(Tier::Basic)), Ok(()));
    }

    #[test]
    fn a_large_transfer_needs_a_recent_login_and_a_small_one_does_not() {
        let stale = context(Tier::Full, 601, false);
        let large = decide_transfer(&policy(), &stale, "w", units(101), now());
        assert_eq!(large, Err(Refusal::ReauthenticationRequired));
        assert!(decide_transfer(&policy(), &stale, "w", units(100), now()).is_ok());
    }

    #[test]
    fn a_first_recipient_gets_at_most_the_cap() {
        let first = context(Tier::Full, 0, true);
        let over = decide_transfer(&policy(), &first, "w", units(51), now());
        assert_eq!(over, Err(Refusal::FirstRecipientLimit));
        assert!(decide_transfer(&policy(), &context(Tier::Full, 0, false), "w", units(51), now()).is_ok());
    }

    #[test]
    fn review_above_the_threshold_and_the_daily_limit_scaled_by_tier() {
        let decided =
            decide_transfer(&policy(), &context(Tier::Basic, 0, false), "w", units(501), now()).unwrap();
        assert!(decided.review);
        let limit = decided.limit.unwrap();
        assert_eq!(limit.key, "transfer:w:2026-12-01");
        assert_eq!(limit.limit, units(100), "basic: 10% of 1000");
        let at = decide_transfer(&policy(), &context(Tier::Full, 0, false), "w", units(500), now()).unwrap();
        assert!(!at.review, "at the threshold: no review");
        assert_eq!(at.limit.unwrap().limit, units(1000));
    }

    #[test]
    fn no_policy_means_no_rule_but_the_risk_state() {
        let off = TransferPolicy::default();
        let decided = decide_transfer(
            &off,
            &context(Tier::Full, 99_999, true),
            "w",
            units(10_000),
            now(),
        )
        .unwrap();
        assert_eq!(
            decided,
            TransferDecision {
                review: false,
                limit: None
            }
        );
        let unverified = context(Tier::Unverified, 0, false);
        assert_eq!(
            decide_transfer(&off, &unverified, "w", units(1), now()),
            Err(Refusal::VerificationRequired)
        );
    }

    #[test]
    fn tiers_scale_limits_by_percent() {
        let tiers = TierLimits { basic_percent: 25 };
        assert_eq!(tiers.scale(units(1000), Tier::Full), units(1000));
        assert_eq!(tiers.scale(units(1000), Tier::Basic), units(250));
        assert_eq!(tiers.scale(units(1000), Tier::Unverified), units(0));
        assert!(valid_flag("pep") && !valid_flag("PEP") && !valid_flag(""));
    }

    #[test]
    fn above_the_threshold_two_different_approvers_are_needed_and_owners_none() {
        assert_eq!(
            approvals_required(units(10), Some(units(10))),
            1,
            "at the threshold: one"
        );
        assert_eq!(approvals_required(units(11), Some(units(10))), 2);
        assert_eq!(approvals_required(units(11), None), 1);
        let none: Vec<String> = Vec::new();
        let first = vec!["ann".to_string()];
        assert_eq!(next_approval(2, &none, "ann", &[]), Ok(ApprovalStep::Record));
        assert_eq!(next_approval(2, &first, "ann", &[]), Err(Refusal::SameApprover));
        assert_eq!(next_approval(2, &first, "bob", &[]), Ok(ApprovalStep::Execute));
        assert_eq!(next_approval(1, &none, "ann", &[]), Ok(ApprovalStep::Execute));
        assert_eq!(next_approval(1, &none, "ann", &["ann"]), Err(Refusal::OwnAccount));
    }
}
