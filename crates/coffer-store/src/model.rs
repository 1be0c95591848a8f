//! Documents as stored. Amounts are Decimal128 and times BSON dates in the database (see
//! [`crate::codec`]); in these types they are domain amounts and `chrono` times, so no caller
//! outside the store handles a driver type.

use coffer_domain::SignedAmount;
use coffer_domain::{AccountKind, Amount, Bucket, Side, StateChange, TxKind, TxState};

use crate::codec::Time;
use serde::{Deserialize, Serialize};

use crate::codec;

/// Roles (S2). `payment` is the service role of payment rails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Support,
    Finance,
    Engineering,
    Admin,
    Payment,
    /// The KYC provider's service role: sets users' verification tiers.
    Kyc,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Support => "support",
            Role::Finance => "finance",
            Role::Engineering => "engineering",
            Role::Admin => "admin",
            Role::Payment => "payment",
            Role::Kyc => "kyc",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [
            Role::User,
            Role::Support,
            Role::Finance,
            Role::Engineering,
            Role::Admin,
            Role::Payment,
            Role::Kyc,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserDoc {
    #[serde(rename = "_id")]
    pub id: String,
    /// Lower-cased; unique. Stored sealed, with a blind index for look-ups (`users`, `pii`).
    pub email: String,
    pub password_hash: String,
    pub role: Role,
    /// The staff account's TOTP secret (base32), once enrolled; stored sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_secret: Option<String>,
    /// The TOTP step of the last accepted code: a code of this step or an earlier one is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_last_step: Option<i64>,
    #[serde(with = "codec::time")]
    pub created_at: Time,
    /// The user's risk state (S8), once the KYC provider or staff set it; absent: the default
    /// tier's (`COFFER_KYC_DEFAULT_TIER`), not frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<coffer_domain::policy::RiskProfile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshTokenDoc {
    /// SHA-256 of the token; the token itself is never stored.
    #[serde(rename = "_id")]
    pub token_hash: String,
    pub user_id: String,
    pub family_id: String,
    /// When the user proved their password; refreshes carry it unchanged.
    pub auth_time: i64,
    #[serde(with = "codec::time")]
    pub created_at: Time,
    #[serde(with = "codec::time")]
    pub expires_at: Time,
    #[serde(with = "codec::time_opt", default)]
    pub used_at: Option<Time>,
    pub revoked: bool,
}

/// An account with its cached balances. User wallets and platform accounts share the shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WalletDoc {
    #[serde(rename = "_id")]
    pub id: String,
    /// `user:<user id>:<asset>` or `platform:<asset>:<kind>`; unique.
    pub owner_key: String,
    pub kind: AccountKind,
    pub user_id: Option<String>,
    pub asset: String,
    /// The asset's decimals when the account was opened; an asset's decimals never change.
    pub decimals: u8,
    /// Cached sums of the ledger, credit-positive, per bucket.
    #[serde(with = "codec::signed")]
    pub available: SignedAmount,
    #[serde(with = "codec::signed")]
    pub pending: SignedAmount,
    #[serde(with = "codec::signed")]
    pub held: SignedAmount,
    /// The sequence number of the account's last ledger entry: every entry moves it by one, in
    /// the transaction that writes the entry (`LedgerEntryDoc::seq`).
    pub version: i64,
    #[serde(with = "codec::time")]
    pub created_at: Time,
    /// When the last entry was posted (or the account created); entries are never dated earlier.
    #[serde(with = "codec::time")]
    pub updated_at: Time,
}

/// A user wallet's balances decoded, never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balances {
    pub available: Amount,
    pub pending: Amount,
    pub held: Amount,
}

impl Balances {
    pub fn total(&self) -> Amount {
        self.available
            .checked_add(self.held)
            .and_then(|t| t.checked_add(self.pending))
            .expect("each is below 10^33")
    }
}

impl WalletDoc {
    pub fn user_owner_key(user_id: &str, asset: &str) -> String {
        format!("user:{user_id}:{asset}")
    }

    /// The wallet as a plan sees it.
    pub fn as_ref(&self) -> coffer_domain::WalletRef {
        coffer_domain::WalletRef {
            id: self.id.clone(),
            user_id: self.user_id.clone(),
            asset: self.asset.clone(),
        }
    }

    /// The cached balance of a bucket, credit-positive.
    pub fn bucket(&self, bucket: Bucket) -> SignedAmount {
        match bucket {
            Bucket::Available => self.available,
            Bucket::Pending => self.pending,
            Bucket::Held => self.held,
        }
    }

    /// A user wallet's balances; an error if any is negative (which the write path forbids).
    pub fn balances(&self) -> Result<Balances, codec::DecodeError> {
        let non_negative = |value: SignedAmount| {
            if value.negative {
                Err(codec::DecodeError(format!(
                    "negative balance -{}",
                    value.magnitude
                )))
            } else {
                Ok(value.magnitude)
            }
        };
        Ok(Balances {
            available: non_negative(self.available)?,
            pending: non_negative(self.pending)?,
            held: non_negative(self.held)?,
        })
    }
}

/// One timeline entry of a transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub from: Option<TxState>,
    pub to: TxState,
    #[serde(with = "codec::time")]
    pub at: Time,
    pub cause: String,
}

impl From<&StateChange> for TimelineEntry {
    fn from(change: &StateChange) -> Self {
        TimelineEntry {
            from: change.from,
            to: change.to,
            at: codec::from_millis(change.at.timestamp_millis()),
            cause: change.cause.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransactionDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub kind: TxKind,
    pub state: TxState,
    pub asset: String,
    /// The asset's decimals, to render `amount`.
    pub decimals: u8,
    /// Smallest units, as a decimal integer string.
    pub amount: Amount,
    /// Deterministic key that makes a movement happen at most once (unique).
    pub ledger_key: String,
    /// Users who may see this transaction.
    pub participants: Vec<String>,
    pub from_wallet_id: Option<String>,
    pub to_wallet_id: Option<String>,
    pub external_reference: Option<String>,
    /// Where a withdrawal goes (a chain address).
    pub destination: Option<String>,
    pub initiated_by: String,
    pub timeline: Vec<TimelineEntry>,
    #[serde(with = "codec::time")]
    pub created_at: Time,
    #[serde(with = "codec::time")]
    pub updated_at: Time,
    /// The daily withdrawal counter this withdrawal charged (`<wallet>:<YYYY-MM-DD>`); released
    /// when the withdrawal fails or is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub velocity_key: Option<String>,
    /// The transaction a refund or dispute returns money of (L10); the original lists its
    /// returns by this field (index `by_original`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_transaction_id: Option<String>,
    /// A withdrawal's signed chain transaction, stored before it is broadcast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<BroadcastDoc>,
    /// First approvals of a decision in manual review that needs two (staff-only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub review_approvals: Vec<StaffApproval>,
}

impl TransactionDoc {
    /// The fields its events describe.
    pub fn summary(&self) -> coffer_domain::movement::TransactionSummary {
        coffer_domain::movement::TransactionSummary {
            transaction_id: self.id.clone(),
            kind: self.kind,
            state: self.state,
            asset: self.asset.clone(),
            amount: self.amount,
            decimals: self.decimals,
            from_wallet_id: self.from_wallet_id.clone(),
        }
    }
}

/// What a signed version of a withdrawal does on chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignedKind {
    /// Pays the withdrawal out.
    #[default]
    Payment,
    /// A zero-value transfer from the hot wallet to itself with the same nonce: once mined, the
    /// payment can never be.
    Cancel,
}

/// One signed version of a withdrawal: the original, a fee-raised replacement or a cancel. All
/// versions of a withdrawal spend the same nonce, so at most one of them is ever mined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedVersion {
    /// Lower-case `0x…` hash of the signed transaction.
    pub tx_hash: String,
    /// The signed transaction, EIP-2718 encoded, `0x…` hex. Public once broadcast; never logged.
    pub raw_tx: String,
    #[serde(with = "codec::time")]
    pub signed_at: Time,
    #[serde(default)]
    pub kind: SignedKind,
    /// Its EIP-1559 fee fields, wei per gas.
    #[serde(default)]
    pub max_fee_per_gas: i64,
    #[serde(default)]
    pub max_priority_fee_per_gas: i64,
}

/// A staff request to cancel a broadcast withdrawal (the broadcaster signs the cancel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    pub by: String,
    pub reason: String,
    #[serde(with = "codec::time")]
    pub at: Time,
}

/// The on-chain side of a withdrawal. Written with the nonce it consumed before the first
/// broadcast: every later attempt re-sends these exact bytes, so a withdrawal is signed once per
/// version. A version is replaced (same nonce, higher fees, or a cancel) only by
/// [`crate::Store::record_replacement`], which keeps the earlier ones in `replaced`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastDoc {
    pub chain: String,
    /// The hot wallet that signed (lower-case `0x…`).
    pub from: String,
    pub nonce: i64,
    /// Lower-case `0x…` hash of the latest signed version.
    pub tx_hash: String,
    /// The latest signed version, EIP-2718 encoded, `0x…` hex. Public once broadcast; never logged.
    pub raw_tx: String,
    #[serde(with = "codec::time")]
    pub signed_at: Time,
    /// What the latest version does.
    #[serde(default)]
    pub kind: SignedKind,
    /// The latest version's EIP-1559 fee fields, wei per gas.
    #[serde(default)]
    pub max_fee_per_gas: i64,
    #[serde(default)]
    pub max_priority_fee_per_gas: i64,
    /// The earlier versions, oldest first (each may still be mined instead of the latest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<SignedVersion>,
    /// The hash of the version the chain mined, once seen (re-orgs may clear it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mined_tx_hash: Option<String>,
    /// A staff request to cancel (pending while the latest version is not the cancel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<CancelRequest>,
    /// Where it was mined, as last seen (re-orgs move it).
    #[serde(default)]
    pub block_number: Option<i64>,
    #[serde(default)]
    pub confirmations: i64,
    /// Gas paid, in the chain's native coin's smallest units, once mined.
    #[serde(default)]
    pub network_fee: Option<Amount>,
}

impl BroadcastDoc {
    /// The latest version.
    pub fn latest(&self) -> SignedVersion {
        SignedVersion {
            tx_hash: self.tx_hash.clone(),
            raw_tx: self.raw_tx.clone(),
            signed_at: self.signed_at,
            kind: self.kind,
            max_fee_per_gas: self.max_fee_per_gas,
            max_priority_fee_per_gas: self.max_priority_fee_per_gas,
        }
    }

    /// Every version, the latest first.
    pub fn versions(&self) -> Vec<SignedVersion> {
        let mut all = vec![self.latest()];
        all.extend(self.replaced.iter().rev().cloned());
        all
    }

    /// This record with `next` as its latest version and the current one kept in `replaced`.
    pub fn replaced_by(&self, next: SignedVersion) -> BroadcastDoc {
        let mut record = self.clone();
        record.replaced.push(self.latest());
        record.tx_hash = next.tx_hash;
        record.raw_tx = next.raw_tx;
        record.signed_at = next.signed_at;
        record.kind = next.kind;
        record.max_fee_per_gas = next.max_fee_per_gas;
        record.max_priority_fee_per_gas = next.max_priority_fee_per_gas;
        record
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerEntryDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub transaction_id: String,
    pub account_id: String,
    pub user_id: Option<String>,
    pub asset: String,
    pub kind: TxKind,
    pub bucket: Bucket,
    pub side: Side,
    /// Credit-positive signed amount: summing a wallet's entries per bucket gives its balance.
    #[serde(with = "codec::signed")]
    pub amount: SignedAmount,
    /// When it was posted. Never earlier than the account's entry before it (writers take the
    /// later of their clock and the account's `updated_at`), so time and `seq` order agree.
    #[serde(with = "codec::time")]
    pub created_at: Time,
    /// The account's sequence number of this entry: its `version` right after it, one more than
    /// the entry before. Absent on entries written before statements existed (issue 18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// The account's balances right after this entry (absent where `seq` is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_after_atomic: Option<BalancesAfter>,
}

/// An account's three buckets right after one ledger entry, credit-positive, smallest units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancesAfter {
    #[serde(with = "codec::signed")]
    pub available: SignedAmount,
    #[serde(with = "codec::signed")]
    pub pending: SignedAmount,
    #[serde(with = "codec::signed")]
    pub held: SignedAmount,
}

impl From<coffer_domain::history::BucketBalances> for BalancesAfter {
    fn from(b: coffer_domain::history::BucketBalances) -> Self {
        BalancesAfter {
            available: b.available,
            pending: b.pending,
            held: b.held,
        }
    }
}

impl From<BalancesAfter> for coffer_domain::history::BucketBalances {
    fn from(b: BalancesAfter) -> Self {
        coffer_domain::history::BucketBalances {
            available: b.available,
            pending: b.pending,
            held: b.held,
        }
    }
}

impl LedgerEntryDoc {
    /// Where the account's history stood right after this entry; None on an entry written
    /// before entries carried their sequence number and balances.
    pub fn position(&self) -> Option<coffer_domain::history::Position> {
        Some(coffer_domain::history::Position {
            seq: self.seq?,
            balances: self.balance_after_atomic?.into(),
        })
    }
}

/// An event of the outbox: written in the transaction of what it reports, published to RabbitMQ
/// by the outbox publisher in its partition's sequence order (see [`crate::outbox`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub event_type: String,
    pub data_version: u32,
    /// The aggregate: the wallet the event is about (per-aggregate order).
    pub subject: String,
    /// The user whose stream receives it.
    pub user_id: String,
    /// The versioned payload (docs/events.md).
    pub data: serde_json::Value,
    #[serde(with = "codec::time")]
    pub created_at: Time,
    /// The outbox partition of `subject`, set when the row is appended.
    #[serde(default)]
    pub partition: i32,
    /// Its place in the partition: gapless and in commit order, set when the row is appended.
    #[serde(default)]
    pub seq: i64,
    /// Failed publish attempts (returned, nacked, timed out); see `dead_lettered_at`.
    #[serde(default)]
    pub attempts: i32,
    /// W3C trace context of the span that wrote the row (the database transaction's when traces
    /// are exported, else the client's `traceparent` as received), carried into the message.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// Set while a refused row waits for its next attempt (the partition's cursor has moved on).
    #[serde(default, with = "codec::time_opt")]
    pub retry_at: Option<Time>,
    /// Set when the row kept failing and was sent to the dead-letter queue instead.
    #[serde(default, with = "codec::time_opt")]
    pub dead_lettered_at: Option<Time>,
    /// The last publish failure (reply text of the broker), for operators.
    #[serde(default)]
    pub last_error: Option<String>,
}

impl OutboxDoc {
    /// A new row (id and creation time now; partition and sequence are given when it is
    /// appended); the one constructor every writer uses.
    pub fn new(
        event_type: &str,
        data_version: u32,
        subject: &str,
        user_id: &str,
        data: serde_json::Value,
    ) -> Self {
        OutboxDoc {
            id: crate::new_id(),
            event_type: event_type.to_string(),
            data_version,
            subject: subject.to_string(),
            user_id: user_id.to_string(),
            data,
            created_at: codec::now(),
            partition: crate::outbox::partition_of(subject),
            seq: 0,
            attempts: 0,
            traceparent: None,
            retry_at: None,
            dead_lettered_at: None,
            last_error: None,
        }
    }
}

tokio::task_local! {
    /// The `traceparent` of the request being served; outbox rows written within it carry it
    /// when traces are not exported.
    pub static TRACEPARENT: String;
}

/// The trace context an outbox row written now carries: the current span's when traces are
/// exported, else the request's `traceparent` if the caller runs within [`TRACEPARENT`].
pub fn current_traceparent() -> Option<String> {
    coffer_telemetry::propagation::current_traceparent().or_else(|| TRACEPARENT.try_with(|t| t.clone()).ok())
}

/// One staff member's approval of a decision that needs two (issue 13 item 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaffApproval {
    /// The staff member's user id.
    pub by: String,
    #[serde(with = "crate::codec::time")]
    pub at: Time,
    /// Why (1 to 500 characters).
    pub reason: String,
}

impl StaffApproval {
    pub fn now(by: &str, reason: &str) -> Self {
        StaffApproval {
            by: by.to_string(),
            at: codec::now(),
            reason: reason.to_string(),
        }
    }
}
