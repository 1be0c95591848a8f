//! The transaction state machine. Every change goes through [`TxState::transition`], which
//! refuses what the diagram does not allow, and is recorded as a [`StateChange`] with time and cause.
//!
//! ```text
//! Created ──► PendingBroadcast ──► Broadcasted ──► Confirming ──► Confirmed
//!    │  ╲            │  ▲               │  │             │            │
//!    │   ╲           ▼  │               ▼  ▼             ▼            ▼
//!    │    ╲──────► Retryable          Retryable        Failed      ManualReview (re-org after credit)
//!    ▼
//! Confirmed (internal movements) · Confirming (chain deposits) · ManualReview · Failed
//! Created ──► Disputed ──► Confirmed (chargeback reversed) · Failed (hold released)
//! ```

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxState {
    Created,
    PendingBroadcast,
    Broadcasted,
    Confirming,
    Confirmed,
    Retryable,
    Failed,
    ManualReview,
    /// A rail deposit's chargeback is open: the disputed amount is held in the wallet until the
    /// rail resolves it (released: Failed; reversed: Confirmed).
    Disputed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("a transaction cannot go from {from:?} to {to:?}")]
pub struct TransitionError {
    pub from: TxState,
    pub to: TxState,
}

impl TxState {
    pub const ALL: [TxState; 9] = [
        TxState::Created,
        TxState::PendingBroadcast,
        TxState::Broadcasted,
        TxState::Confirming,
        TxState::Confirmed,
        TxState::Retryable,
        TxState::Failed,
        TxState::ManualReview,
        TxState::Disputed,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            TxState::Created => "created",
            TxState::PendingBroadcast => "pending_broadcast",
            TxState::Broadcasted => "broadcasted",
            TxState::Confirming => "confirming",
            TxState::Confirmed => "confirmed",
            TxState::Retryable => "retryable",
            TxState::Failed => "failed",
            TxState::ManualReview => "manual_review",
            TxState::Disputed => "disputed",
        }
    }

    /// The states this one may move to.
    pub fn successors(&self) -> &'static [TxState] {
        use TxState::*;
        match self {
            Created => &[
                PendingBroadcast,
                Confirming,
                Confirmed,
                ManualReview,
                Disputed,
                Failed,
            ],
            PendingBroadcast => &[Broadcasted, Retryable, ManualReview, Failed],
            Broadcasted => &[Confirming, Confirmed, Retryable, Failed],
            Confirming => &[Confirmed, Failed],
            Retryable => &[PendingBroadcast, Broadcasted, Failed],
            ManualReview => &[PendingBroadcast, Confirmed, Failed],
            Confirmed => &[ManualReview],
            Disputed => &[Confirmed, Failed],
            Failed => &[],
        }
    }

    /// `Ok(to)` when the move is allowed.
    pub fn transition(self, to: TxState) -> Result<TxState, TransitionError> {
        if self.successors().contains(&to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }

    /// No automatic process moves a transaction out of a final state.
    pub fn is_final(&self) -> bool {
        matches!(self, TxState::Confirmed | TxState::Failed)
    }
}

/// One entry of a transaction's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    pub from: Option<TxState>,
    pub to: TxState,
    pub at: DateTime<Utc>,
    pub cause: String,
}

impl StateChange {
    /// The first entry: a transaction comes into being in `to`.
    pub fn initial(to: TxState, at: DateTime<Utc>, cause: impl Into<String>) -> Self {
        StateChange {
            from: None,
            to,
            at,
            cause: cause.into(),
        }
    }

    /// A checked move from `from` to `to`.
    pub fn step(
        from: TxState,
        to: TxState,
        at: DateTime<Utc>,
        cause: impl Into<String>,
    ) -> Result<Self, TransitionError> {
        from.transition(to)?;
        Ok(StateChange {
            from: Some(from),
            to,
            at,
            cause: cause.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_withdrawal_walks_the_happy_path() {
        let mut state = TxState::Created;
        for next in [
            TxState::PendingBroadcast,
            TxState::Broadcasted,
            TxState::Confirming,
            TxState::Confirmed,
        ] {
            state = state.transition(next).unwrap();
        }
        assert_eq!(state, TxState::Confirmed);
    }

    #[test]
    fn failed_is_terminal_and_confirmed_only_goes_to_review() {
        for to in TxState::ALL {
            assert!(TxState::Failed.transition(to).is_err());
        }
        assert_eq!(TxState::Confirmed.successors(), &[TxState::ManualReview]);
    }

    #[test]
    fn a_step_records_where_it_came_from() {
        let change = StateChange::step(
            TxState::PendingBroadcast,
            TxState::Broadcasted,
            Utc::now(),
            "sent",
        )
        .unwrap();
        assert_eq!(change.from, Some(TxState::PendingBroadcast));
        let refused = StateChange::step(TxState::Created, TxState::Broadcasted, Utc::now(), "skip");
        assert_eq!(
            refused,
            Err(TransitionError {
                from: TxState::Created,
                to: TxState::Broadcasted
            })
        );
    }

    proptest! {
        #[test]
        fn random_walks_only_take_listed_edges(choices in proptest::collection::vec(0usize..8, 0..40)) {
            let mut state = TxState::Created;
            for choice in choices {
                let to = TxState::ALL[choice];
                match state.transition(to) {
                    Ok(next) => { prop_assert!(state.successors().contains(&to)); state = next; }
                    Err(e) => { prop_assert!(!state.successors().contains(&to)); prop_assert_eq!(e.from, state); }
                }
            }
        }
    }
}
