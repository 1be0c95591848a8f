//! Accounts of the ledger: one user wallet per user and asset, and platform accounts per asset.

use serde::{Deserialize, Serialize};

/// What an account is for. User wallets are liabilities (the platform owes the user); custody is
/// an asset (what the platform holds on chain); the others are platform-side liabilities/equity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    User,
    Custody,
    WithdrawalsInFlight,
    Fees,
    Suspense,
    /// The platform's position in an asset from conversions (L11): credited with what users
    /// convert from, debited with what they convert to. It may go negative: a negative FX
    /// balance is what the platform owes out of its own inventory until treasury rebalances
    /// (docs/api.md, "Conversions").
    Fx,
}

impl AccountKind {
    /// The platform accounts every asset has.
    pub const PLATFORM: [AccountKind; 5] = [
        AccountKind::Custody,
        AccountKind::WithdrawalsInFlight,
        AccountKind::Fees,
        AccountKind::Suspense,
        AccountKind::Fx,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            AccountKind::User => "user",
            AccountKind::Custody => "custody",
            AccountKind::WithdrawalsInFlight => "withdrawals_in_flight",
            AccountKind::Fees => "fees",
            AccountKind::Suspense => "suspense",
            AccountKind::Fx => "fx",
        }
    }

    /// Whether a balance of this kind grows with credits (liabilities) or with debits (assets).
    /// The ledger stores every balance credit-positive; displays flip debit-normal accounts.
    pub fn is_credit_normal(&self) -> bool {
        !matches!(self, AccountKind::Custody)
    }

    /// Whether the cached balances of this account may never go below zero.
    pub fn must_stay_non_negative(&self) -> bool {
        matches!(self, AccountKind::User)
    }
}

/// The deterministic id of a platform account, e.g. `platform:ETH:custody`.
pub fn platform_account_id(asset: &str, kind: AccountKind) -> String {
    debug_assert!(kind != AccountKind::User);
    format!("platform:{asset}:{}", kind.as_str())
}

/// The part of an account's balance a posting touches. `available` is spendable, `held` is
/// reserved (a withdrawal in progress), `pending` is seen but not yet final (a confirming deposit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    Available,
    Pending,
    Held,
}

impl Bucket {
    pub const ALL: [Bucket; 3] = [Bucket::Available, Bucket::Pending, Bucket::Held];

    /// The field name of the cached balance in a wallet document.
    pub fn as_str(&self) -> &'static str {
        match self {
            Bucket::Available => "available",
            Bucket::Pending => "pending",
            Bucket::Held => "held",
        }
    }
}
