//! Plans: a validated request or an observed chain event becomes a [`Movement`], or a typed
//! [`Refusal`]. Every money rule of a movement's creation lives here (which wallets may take part,
//! the asset's switches and limits, the review threshold, the postings, the events), so handlers
//! only parse, authorize, plan, apply and render, and each rule is tested without a server.

use chrono::{DateTime, Utc};

use crate::amount::{signed_decimal_string, Amount};
use crate::asset::AssetConfig;
use crate::events::{DepositDetectedV1, EventType};
use crate::ledger::{LedgerError, LedgerTransaction};
use crate::movement::{
    participants, timeline, transaction_events, LimitCharge, Movement, PlannedEvent, WalletRef,
};
use crate::state::TxState;

/// Why a plan was refused. Each has a stable code (the API's problem `code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the source and destination are the same wallet")]
    SameWallet,
    #[error("the wallets hold different assets")]
    AssetMismatch,
    #[error("the destination is not a user wallet")]
    NotAUserWallet,
    #[error("the amount is above the ledger's limit")]
    AmountTooLarge,
    #[error("deposits of this asset are paused")]
    DepositsDisabled,
    #[error("withdrawals of this asset are paused")]
    WithdrawalsDisabled,
    #[error("the amount is below the asset's minimum withdrawal")]
    BelowMinimum,
    #[error("the amount is above the asset's maximum withdrawal")]
    AboveMaximum,
    #[error("this request needs a trusted device of the caller")]
    DeviceNotTrusted,
    #[error("this request needs a recent password login")]
    ReauthenticationRequired,
    #[error("the destination is not in your address book; save it first")]
    DestinationNotSaved,
    #[error("the destination was saved recently and is still in its cooling-off period")]
    DestinationCoolingOff,
    #[error("the zero address, the platform's own addresses and token contracts cannot be saved")]
    ForbiddenDestination,
    #[error("the account is frozen: nothing can leave it until staff unfreeze it")]
    AccountFrozen,
    #[error("the account's identity is not verified yet")]
    VerificationRequired,
    #[error("a first transfer to this recipient is above the asset's cap for new recipients")]
    FirstRecipientLimit,
    #[error("staff accounts cannot hold or receive user wallets")]
    StaffAccount,
    #[error("you gave the first approval; a different staff member must give the second")]
    SameApprover,
    #[error("nobody approves a movement into or out of an account they own")]
    OwnAccount,
    #[error("this transaction cannot be refunded by you: only a confirmed transfer (by its recipient) or rail deposit (by its rail)")]
    NotRefundable,
    #[error("only a confirmed rail deposit can be disputed, by its rail")]
    NotDisputable,
    #[error("the amount is more than what remains of the original after its refunds and disputes")]
    ExceedsOriginal,
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::SameWallet => "same_wallet",
            Refusal::AssetMismatch => "asset_mismatch",
            Refusal::NotAUserWallet => "wallet_not_found",
            Refusal::AmountTooLarge => "amount_too_large",
            Refusal::DepositsDisabled => "deposits_disabled",
            Refusal::WithdrawalsDisabled => "withdrawals_disabled",
            Refusal::BelowMinimum => "below_minimum",
            Refusal::AboveMaximum => "above_maximum",
            Refusal::DeviceNotTrusted => "device_not_trusted",
            Refusal::ReauthenticationRequired => "reauthentication_required",
            Refusal::DestinationNotSaved => "destination_not_saved",
            Refusal::DestinationCoolingOff => "destination_cooling_off",
            Refusal::ForbiddenDestination => "forbidden_destination",
            Refusal::AccountFrozen => "account_frozen",
            Refusal::VerificationRequired => "verification_required",
            Refusal::FirstRecipientLimit => "first_recipient_limit",
            Refusal::StaffAccount => "staff_account",
            Refusal::SameApprover => "same_approver",
            Refusal::OwnAccount => "own_account",
            Refusal::NotRefundable => "not_refundable",
            Refusal::NotDisputable => "not_disputable",
            Refusal::ExceedsOriginal => "exceeds_original",
        }
    }
}

pub(crate) fn ledger_refusal(error: LedgerError) -> Refusal {
    match error {
        LedgerError::SameAccount => Refusal::SameWallet,
        LedgerError::AboveLedgerLimit => Refusal::AmountTooLarge,
        // Plans only build postings of validated, positive amounts.
        other => panic!("a plan built an invalid ledger transaction: {other}"),
    }
}

/// Who and when: the id the new transaction gets, the time of the plan and the initiator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub transaction_id: String,
    pub now: DateTime<Utc>,
    /// A user id, a service account id, or `listener` / `webhook:<provider>`.
    pub initiated_by: String,
}

/// The ledger key of a movement requested through the API: one per user and Idempotency-Key.
pub fn api_ledger_key(user_id: &str, idempotency_key: &str) -> String {
    format!("api:{user_id}:{idempotency_key}")
}

pub(crate) fn within_ledger(amount: Amount) -> Result<Amount, Refusal> {
    if amount > crate::amount::ledger_max() {
        Err(Refusal::AmountTooLarge)
    } else {
        Ok(amount)
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn movement(
    origin: Origin,
    ledger: LedgerTransaction,
    ledger_key: String,
    states: &[(TxState, &str)],
    amount: Amount,
    asset: &AssetConfig,
    from: Option<&WalletRef>,
    to: Option<&WalletRef>,
) -> Movement {
    let wallets: Vec<&WalletRef> = from.into_iter().chain(to).collect();
    let mut movement = Movement {
        transaction_id: origin.transaction_id,
        ledger,
        ledger_key,
        state: states.last().expect("at least one state").0,
        timeline: timeline(states, origin.now),
        amount,
        decimals: asset.decimals,
        initiated_by: origin.initiated_by,
        from_wallet_id: from.map(|w| w.id.clone()),
        to_wallet_id: to.map(|w| w.id.clone()),
        external_reference: None,
        destination: None,
        original_transaction_id: None,
        participants: participants(&wallets),
        limits: Vec::new(),
        events: Vec::new(),
    };
    let summary = movement.summary();
    movement.events = transaction_events(
        EventType::TransactionCreated,
        &summary,
        &wallets,
        Some(&movement.ledger),
    );
    movement
}

/// An internal transfer between two user wallets of one asset, final at once.
pub fn plan_transfer(
    origin: Origin,
    idempotency_key: &str,
    from: &WalletRef,
    to: &WalletRef,
    amount: Amount,
    asset: &AssetConfig,
) -> Result<Movement, Refusal> {
    let owner = from.user_id.as_deref().ok_or(Refusal::NotAUserWallet)?;
    if to.user_id.is_none() {
        return Err(Refusal::NotAUserWallet);
    }
    if to.asset != from.asset || from.asset != asset.symbol {
        return Err(Refusal::AssetMismatch);
    }
    let amount = within_ledger(amount)?;
    let ledger =
        LedgerTransaction::transfer(&asset.symbol, &from.id, &to.id, amount).map_err(ledger_refusal)?;
    let key = api_ledger_key(owner, idempotency_key);
    let states = [
        (TxState::Created, "requested"),
        (TxState::Confirmed, "internal transfer posted"),
    ];
    Ok(movement(
        origin,
        ledger,
        key,
        &states,
        amount,
        asset,
        Some(from),
        Some(to),
    ))
}

/// An outgoing transfer the policy held for a reviewer: the amount moves from the sender's
/// available to held and waits in ManualReview; approval posts it to the recipient, rejection
/// releases it (the store's review transition). Same checks and ledger key as [`plan_transfer`].
pub fn plan_transfer_review(
    origin: Origin,
    idempotency_key: &str,
    from: &WalletRef,
    to: &WalletRef,
    amount: Amount,
    asset: &AssetConfig,
) -> Result<Movement, Refusal> {
    let mut movement = plan_transfer(origin.clone(), idempotency_key, from, to, amount, asset)?;
    let ledger = LedgerTransaction::transfer_hold(&asset.symbol, &from.id, amount).map_err(ledger_refusal)?;
    let states = [
        (TxState::Created, "requested"),
        (
            TxState::ManualReview,
            "funds held; above the review threshold, waiting for a reviewer",
        ),
    ];
    let key = std::mem::take(&mut movement.ledger_key);
    // Only the sender's wallet moves now, so only the sender takes part (the book checks that);
    // the recipient hears of it when a reviewer posts it.
    let mut held = self::movement(origin, ledger, key, &states, amount, asset, Some(from), None);
    held.to_wallet_id = Some(to.id.clone());
    held.limits = movement.limits;
    Ok(held)
}

/// Why a payment-rail deposit waits for staff instead of being credited (issue 13 item 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RailHold {
    /// Above the rail's `deposit_max`.
    DepositMax,
    /// It would take the rail's credits of the UTC day past its `daily_limit`.
    DailyLimit,
}

impl RailHold {
    pub fn as_str(&self) -> &'static str {
        match self {
            RailHold::DepositMax => "deposit_max",
            RailHold::DailyLimit => "daily_limit",
        }
    }

    pub fn parse(text: &str) -> Option<RailHold> {
        match text {
            "deposit_max" => Some(RailHold::DepositMax),
            "daily_limit" => Some(RailHold::DailyLimit),
            _ => None,
        }
    }
}

/// What a rail deposit comes to: credited now, or held for a staff approval.
#[derive(Debug, Clone, PartialEq)]
pub enum RailDeposit {
    /// Credit it; with caps configured the movement charges the rail's daily counter, and a
    /// charge past the limit is refused by the book ([`RailHold::DailyLimit`] for the caller).
    Credit(Box<Movement>),
    Hold(RailHold),
}

/// The ledger key of rail `rail`'s deposit `reference`: credited once, held or not.
pub fn rail_ledger_key(rail: &str, reference: &str) -> String {
    format!("deposit:{rail}:{reference}")
}

/// The daily counter of rail `rail`'s credits of `asset` for the UTC day of `now`.
fn rail_daily_charge(
    rail: &str,
    asset: &AssetConfig,
    amount: Amount,
    limit: Amount,
    now: DateTime<Utc>,
) -> LimitCharge {
    LimitCharge::daily(&format!("rail:{rail}:{}", asset.symbol), amount, limit, now)
}

fn rail_credit(
    origin: Origin,
    rail: &str,
    reference: &str,
    wallet: &WalletRef,
    amount: Amount,
    asset: &AssetConfig,
    states: &[(TxState, &str)],
) -> Result<Movement, Refusal> {
    if wallet.user_id.is_none() {
        return Err(Refusal::NotAUserWallet);
    }
    if wallet.asset != asset.symbol {
        return Err(Refusal::AssetMismatch);
    }
    if !asset.deposits_enabled {
        return Err(Refusal::DepositsDisabled);
    }
    let amount = within_ledger(amount)?;
    let ledger = LedgerTransaction::deposit(&asset.symbol, &wallet.id, amount).map_err(ledger_refusal)?;
    let key = rail_ledger_key(rail, reference);
    let mut movement = movement(origin, ledger, key, states, amount, asset, None, Some(wallet));
    movement.external_reference = Some(reference.to_string());
    Ok(movement)
}

/// A credit from a payment rail: custody → the wallet, final at once, once per rail reference.
/// Under the asset's caps for `rail` (`rails.<rail>`): above `deposit_max` it is held; otherwise
/// it charges the rail's daily counter against `daily_limit` in the same write as the credit.
pub fn plan_rail_deposit(
    origin: Origin,
    rail: &str,
    reference: &str,
    wallet: &WalletRef,
    amount: Amount,
    asset: &AssetConfig,
) -> Result<RailDeposit, Refusal> {
    let now = origin.now;
    let states = [
        (TxState::Created, "reported by payment rail"),
        (TxState::Confirmed, "credited"),
    ];
    let mut movement = rail_credit(origin, rail, reference, wallet, amount, asset, &states)?;
    if let Some(caps) = asset.rails.get(rail) {
        if amount > caps.deposit_max {
            return Ok(RailDeposit::Hold(RailHold::DepositMax));
        }
        let charge = rail_daily_charge(rail, asset, amount, caps.daily_limit, now);
        movement.limits.push(charge);
    }
    Ok(RailDeposit::Credit(Box::new(movement)))
}

/// The credit of a held rail deposit that staff approved: the same ledger key as
/// [`plan_rail_deposit`] (so it is credited at most once, whoever approves), initiated by the
/// last approver. It counts towards the rail's credits of the day but is not capped by them.
pub fn plan_approved_rail_deposit(
    origin: Origin,
    rail: &str,
    reference: &str,
    wallet: &WalletRef,
    amount: Amount,
    asset: &AssetConfig,
) -> Result<Movement, Refusal> {
    let now = origin.now;
    let states = [
        (
            TxState::Created,
            "reported by payment rail; held for staff approval",
        ),
        (TxState::Confirmed, "credited after staff approval"),
    ];
    let mut movement = rail_credit(origin, rail, reference, wallet, amount, asset, &states)?;
    if asset.rails.contains_key(rail) {
        let charge = rail_daily_charge(rail, asset, amount, crate::amount::ledger_max(), now);
        movement.limits.push(charge);
    }
    Ok(movement)
}

pub use crate::policy::{authorize_withdrawal, WithdrawalAuthority};

/// A withdrawal request: the asset's switch, minimum and maximum; the amount moves from available
/// to held, charged against the wallet's daily limit; above the review threshold it waits in
/// ManualReview, otherwise in PendingBroadcast for the broadcaster. `destination` is a validated,
/// lower-case chain address.
pub fn plan_withdrawal(
    origin: Origin,
    idempotency_key: &str,
    wallet: &WalletRef,
    amount: Amount,
    destination: &str,
    asset: &AssetConfig,
) -> Result<Movement, Refusal> {
    let owner = wallet.user_id.as_deref().ok_or(Refusal::NotAUserWallet)?;
    if wallet.asset != asset.symbol {
        return Err(Refusal::AssetMismatch);
    }
    if !asset.withdrawals_enabled {
        return Err(Refusal::WithdrawalsDisabled);
    }
    if amount < asset.withdrawal_min {
        return Err(Refusal::BelowMinimum);
    }
    if amount > asset.withdrawal_max {
        return Err(Refusal::AboveMaximum);
    }
    let held = (TxState::PendingBroadcast, "funds held; waiting for broadcast");
    let review = (
        TxState::ManualReview,
        "funds held; above the review threshold, waiting for a reviewer",
    );
    let state = if amount > asset.review_threshold {
        review
    } else {
        held
    };
    let ledger =
        LedgerTransaction::withdrawal_hold(&asset.symbol, &wallet.id, amount).map_err(ledger_refusal)?;
    let key = api_ledger_key(owner, idempotency_key);
    let limit = LimitCharge::daily(&wallet.id, amount, asset.daily_withdrawal_limit, origin.now);
    let states = [(TxState::Created, "requested"), state];
    let mut movement = movement(origin, ledger, key, &states, amount, asset, Some(wallet), None);
    movement.destination = Some(destination.to_string());
    movement.limits.push(limit);
    Ok(movement)
}

/// Whether an address may be saved for withdrawals: not the zero address, nor one of the
/// platform's own (`platform`: hot wallets, deposit addresses, token contracts; lower-case).
pub fn allow_saved_address(address: &str, platform: &[String]) -> Result<(), Refusal> {
    let zero = address.trim_start_matches("0x").bytes().all(|b| b == b'0');
    if zero || platform.iter().any(|p| p.eq_ignore_ascii_case(address)) {
        return Err(Refusal::ForbiddenDestination);
    }
    Ok(())
}

/// Whether a withdrawal may go to `destination`: saved in the user's address book, and its
/// cooling-off (`usable_from`) over at `now`.
pub fn authorize_destination(
    usable_from: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), Refusal> {
    match usable_from {
        None => Err(Refusal::DestinationNotSaved),
        Some(from) if from > now => Err(Refusal::DestinationCoolingOff),
        Some(_) => Ok(()),
    }
}

/// A deposit the chain listener or a provider saw on chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDeposit {
    pub chain: String,
    /// Lower-case `0x…`.
    pub tx_hash: String,
    /// The log index of an ERC-20 `Transfer`; `None` for a native coin transfer.
    pub log_index: Option<u64>,
    /// The receiving address, lower-case.
    pub address: String,
    pub asset: String,
    pub amount: Amount,
    pub block_number: u64,
    pub block_hash: String,
    /// `listener` or `webhook:<provider>`.
    pub source: String,
}

impl ChainDeposit {
    /// The deterministic ledger key: the same event credits once, whoever reports it.
    pub fn ledger_key(&self) -> String {
        let index = self
            .log_index
            .map_or_else(|| "native".to_string(), |i| i.to_string());
        format!("chain:{}:{}:{}", self.chain, self.tx_hash, index)
    }

    /// Where this report differs from `proven`, the same event as the chain tells it: the first
    /// differing field's label, `None` when they agree. Only an agreeing report may be credited.
    pub fn disagreement(&self, proven: &ChainDeposit) -> Option<&'static str> {
        if self.ledger_key() != proven.ledger_key() || self.asset != proven.asset {
            return Some("no_such_transfer");
        }
        if (self.block_number, &self.block_hash) != (proven.block_number, &proven.block_hash) {
            return Some("block_mismatch");
        }
        if !self.address.eq_ignore_ascii_case(&proven.address) {
            return Some("recipient_mismatch");
        }
        if self.amount != proven.amount {
            return Some("amount_mismatch");
        }
        None
    }
}

/// A chain deposit at first sight: a `Confirming` transaction with the amount pending against
/// suspense, and `wallet.deposit.detected` for its owner.
pub fn plan_chain_deposit(
    origin: Origin,
    deposit: &ChainDeposit,
    wallet: &WalletRef,
    asset: &AssetConfig,
) -> Result<Movement, Refusal> {
    let owner = wallet.user_id.as_deref().ok_or(Refusal::NotAUserWallet)?;
    if wallet.asset != asset.symbol || deposit.asset != asset.symbol {
        return Err(Refusal::AssetMismatch);
    }
    if !asset.deposits_enabled {
        return Err(Refusal::DepositsDisabled);
    }
    let amount = within_ledger(deposit.amount)?;
    let ledger =
        LedgerTransaction::chain_deposit_seen(&asset.symbol, &wallet.id, amount).map_err(ledger_refusal)?;
    let detected = format!("detected by {}", deposit.source);
    let states = [
        (TxState::Created, detected.as_str()),
        (TxState::Confirming, "waiting for confirmations"),
    ];
    let mut movement = movement(
        origin,
        ledger,
        deposit.ledger_key(),
        &states,
        amount,
        asset,
        None,
        Some(wallet),
    );
    movement.external_reference = Some(deposit.tx_hash.clone());
    let data = DepositDetectedV1 {
        transaction_id: movement.transaction_id.clone(),
        wallet_id: wallet.id.clone(),
        asset: asset.symbol.clone(),
        amount: signed_decimal_string(&amount, false, asset.decimals),
        chain: deposit.chain.clone(),
        tx_hash: deposit.tx_hash.clone(),
        block_number: deposit.block_number,
        confirmations_required: asset.confirmations_required,
    };
    let detected = PlannedEvent::new(EventType::DepositDetected, &wallet.id, owner, &data);
    movement.events.push(detected);
    Ok(movement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::{platform_account_id, AccountKind};
    use crate::asset::AssetCatalog;
    use crate::Bucket;

    fn eth() -> AssetConfig {
        let json = r#"{"version":1,"assets":[{"symbol":"ETH","chain":"ethereum","decimals":18,"contract":null,
            "confirmations_required":3,"deposits_enabled":true,"withdrawals_enabled":true,
            "withdrawal_min":"0.01","withdrawal_max":"10","daily_withdrawal_limit":"20","review_threshold":"5"}]}"#;
        AssetCatalog::from_json(json).unwrap().get("ETH").unwrap().clone()
    }

    fn origin() -> Origin {
        Origin {
            transaction_id: "tx-1".into(),
            now: "2026-12-01T10:00:00Z".parse().unwrap(),
            initiated_by: "alice".into(),
        }
    }

    fn wallet(id: &str, user: Option<&str>, asset: &str) -> WalletRef {
        WalletRef {
            id: id.into(),
            user_id: user.map(String::from),
            asset: asset.into(),
        }
    }

    fn eth_amount(text: &str) -> Amount {
        Amount::parse_decimal(text, 18).unwrap()
    }

    #[test]
    fn a_transfer_moves_available_and_tells_both_owners() {
        let (a, b) = (wallet("a", Some("alice"), "ETH"), wallet("b", Some("bob"), "ETH"));
        let m = plan_transfer(origin(), "k1", &a, &b, eth_amount("0.75"), &eth()).unwrap();
        assert_eq!(m.ledger_key, "api:alice:k1");
        assert_eq!(m.state, TxState::Confirmed);
        assert_eq!(m.participants, vec!["alice", "bob"]);
        assert_eq!(m.timeline.len(), 2);
        let events: Vec<(&str, &str)> = m
            .events
            .iter()
            .map(|e| (e.user_id.as_str(), e.data["amount"].as_str().unwrap()))
            .collect();
        assert_eq!(events, vec![("alice", "-0.75"), ("bob", "0.75")]);
    }

    #[test]
    fn transfers_refuse_self_other_assets_and_platform_accounts() {
        let a = wallet("a", Some("alice"), "ETH");
        let amount = eth_amount("1");
        assert_eq!(
            plan_transfer(origin(), "k", &a, &a, amount, &eth()),
            Err(Refusal::SameWallet)
        );
        let usdt = wallet("u", Some("bob"), "USDT");
        assert_eq!(
            plan_transfer(origin(), "k", &a, &usdt, amount, &eth()),
            Err(Refusal::AssetMismatch)
        );
        let custody = wallet("platform:ETH:custody", None, "ETH");
        assert_eq!(
            plan_transfer(origin(), "k", &a, &custody, amount, &eth()),
            Err(Refusal::NotAUserWallet)
        );
        let huge = crate::amount::ledger_max()
            .checked_add(Amount::from_u64(1))
            .unwrap();
        let b = wallet("b", Some("bob"), "ETH");
        assert_eq!(
            plan_transfer(origin(), "k", &a, &b, huge, &eth()),
            Err(Refusal::AmountTooLarge)
        );
    }

    #[test]
    fn withdrawal_policy_refuses_in_order_and_reviews_above_the_threshold() {
        let a = wallet("a", Some("alice"), "ETH");
        let plan = |amount: &str, asset: &AssetConfig| {
            plan_withdrawal(origin(), "k", &a, eth_amount(amount), "0xab", asset)
        };
        assert_eq!(plan("0.001", &eth()).unwrap_err(), Refusal::BelowMinimum);
        assert_eq!(plan("11", &eth()).unwrap_err(), Refusal::AboveMaximum);
        let mut paused = eth();
        paused.withdrawals_enabled = false;
        assert_eq!(plan("1", &paused).unwrap_err(), Refusal::WithdrawalsDisabled);
        let held = plan("5", &eth()).unwrap();
        assert_eq!(
            held.state,
            TxState::PendingBroadcast,
            "at the threshold: no review"
        );
        assert_eq!(
            held.limits,
            vec![LimitCharge {
                key: "a:2026-12-01".into(),
                amount: eth_amount("5"),
                limit: eth_amount("20"),
            }]
        );
        assert_eq!(held.destination.as_deref(), Some("0xab"));
        let reviewed = plan("5.000000000000000001", &eth()).unwrap();
        assert_eq!(reviewed.state, TxState::ManualReview);
        assert_eq!(reviewed.events[0].data["amount"], "-5.000000000000000001");
    }

    #[test]
    fn a_withdrawal_needs_a_trusted_device_first_and_a_recent_login_second() {
        let authority = |device_trusted, seconds_since_login| WithdrawalAuthority {
            device_trusted,
            seconds_since_login,
            reauthentication_window_seconds: 600,
        };
        assert_eq!(
            authorize_withdrawal(&authority(false, 9999)),
            Err(Refusal::DeviceNotTrusted)
        );
        assert_eq!(
            authorize_withdrawal(&authority(true, 601)),
            Err(Refusal::ReauthenticationRequired)
        );
        assert_eq!(authorize_withdrawal(&authority(true, 600)), Ok(()));
    }

    fn credit(plan: Result<RailDeposit, Refusal>) -> Movement {
        match plan.unwrap() {
            RailDeposit::Credit(movement) => *movement,
            RailDeposit::Hold(cause) => panic!("held: {cause:?}"),
        }
    }

    #[test]
    fn a_rail_deposit_credits_from_custody_once_per_reference() {
        let w = wallet("w", Some("alice"), "ETH");
        let m = credit(plan_rail_deposit(
            origin(),
            "payment",
            "bank-1",
            &w,
            eth_amount("2.5"),
            &eth(),
        ));
        assert_eq!(m.ledger_key, "deposit:payment:bank-1");
        assert_eq!(
            m.ledger.postings()[0].account_id,
            platform_account_id("ETH", AccountKind::Custody)
        );
        assert_eq!(m.participants, vec!["alice"]);
        assert!(m.limits.is_empty(), "an uncapped rail charges no counter");
        let mut paused = eth();
        paused.deposits_enabled = false;
        let refused = plan_rail_deposit(origin(), "payment", "bank-1", &w, eth_amount("1"), &paused);
        assert_eq!(refused, Err(Refusal::DepositsDisabled));
    }

    #[test]
    fn a_capped_rail_holds_above_its_deposit_max_and_charges_its_daily_counter() {
        let w = wallet("w", Some("alice"), "ETH");
        let mut capped = eth();
        let caps = crate::asset::RailLimits {
            deposit_max: eth_amount("5"),
            daily_limit: eth_amount("8"),
        };
        capped.rails.insert("payment".into(), caps);
        let plan =
            |amount: &str| plan_rail_deposit(origin(), "payment", "r", &w, eth_amount(amount), &capped);
        assert_eq!(
            plan("5.000000000000000001"),
            Ok(RailDeposit::Hold(RailHold::DepositMax))
        );
        let at_cap = credit(plan("5"));
        let daily = LimitCharge {
            key: "rail:payment:ETH:2026-12-01".into(),
            amount: eth_amount("5"),
            limit: eth_amount("8"),
        };
        assert_eq!(at_cap.limits, vec![daily.clone()]);
        let other_rail = plan_rail_deposit(origin(), "card", "r", &w, eth_amount("50"), &capped);
        assert!(credit(other_rail).limits.is_empty(), "caps are per rail");
        let approved =
            plan_approved_rail_deposit(origin(), "payment", "r", &w, eth_amount("50"), &capped).unwrap();
        assert_eq!(
            approved.ledger_key, at_cap.ledger_key,
            "one ledger key: credited once"
        );
        assert_eq!(approved.limits[0].key, daily.key, "counted towards the day");
        assert_eq!(
            approved.limits[0].limit,
            crate::amount::ledger_max(),
            "but not capped"
        );
    }

    #[test]
    fn a_chain_deposit_is_pending_against_suspense_and_announced_as_detected() {
        let w = wallet("w", Some("alice"), "ETH");
        let deposit = ChainDeposit {
            chain: "ethereum".into(),
            tx_hash: "0xaa".into(),
            log_index: None,
            address: "0xdd".into(),
            asset: "ETH".into(),
            amount: eth_amount("1.5"),
            block_number: 7,
            block_hash: "0xbb".into(),
            source: "listener".into(),
        };
        let m = plan_chain_deposit(origin(), &deposit, &w, &eth()).unwrap();
        assert_eq!(m.ledger_key, "chain:ethereum:0xaa:native");
        assert_eq!(m.state, TxState::Confirming);
        let deltas = m.ledger.balance_deltas();
        assert!(deltas
            .iter()
            .any(|(id, b, d)| id == "w" && *b == Bucket::Pending && !d.negative));
        let types: Vec<EventType> = m.events.iter().map(|e| e.event_type).collect();
        assert_eq!(
            types,
            vec![EventType::TransactionCreated, EventType::DepositDetected]
        );
        assert_eq!(m.events[1].data["confirmations_required"], 3);
        assert_eq!(
            m.events[0].data["amount"], "1.5",
            "the pending amount, signed for the wallet"
        );
        let token_log = ChainDeposit {
            log_index: Some(4),
            ..deposit
        };
        assert_eq!(token_log.ledger_key(), "chain:ethereum:0xaa:4");
    }
}
