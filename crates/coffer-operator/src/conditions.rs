//! Status conditions: computed as updates and merged so that `lastTransitionTime` only moves
//! when a condition's status actually changes (and an unchanged status is not re-written).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::condition::{DEGRADED, PROGRESSING, READY};

/// The desired state of one condition type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionUpdate {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl ConditionUpdate {
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        ConditionUpdate {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Applies `updates` to `existing`; types not updated are kept as they are. Output is ordered
/// Ready, Progressing, Degraded, then any other type, so it is stable.
pub fn merge(
    existing: &[Condition],
    updates: &[ConditionUpdate],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut merged: Vec<Condition> = existing.to_vec();
    for update in updates {
        let status = if update.status { "True" } else { "False" };
        let previous = merged.iter().position(|c| c.type_ == update.type_);
        let last_transition_time = match previous.map(|i| &merged[i]) {
            Some(old) if old.status == status => old.last_transition_time.clone(),
            _ => now.clone(),
        };
        let condition = Condition {
            type_: update.type_.to_string(),
            status: status.to_string(),
            reason: update.reason.to_string(),
            message: update.message.clone(),
            observed_generation: generation,
            last_transition_time,
        };
        match previous {
            Some(i) => merged[i] = condition,
            None => merged.push(condition),
        }
    }
    merged.sort_by_key(|c| match c.type_.as_str() {
        READY => (0, String::new()),
        PROGRESSING => (1, String::new()),
        DEGRADED => (2, String::new()),
        other => (3, other.to_string()),
    });
    merged
}

/// The status of condition `type_`, if present.
pub fn is_true(conditions: &[Condition], type_: &str) -> Option<bool> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Time {
        Time(text.parse().unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let first = merge(
            &[],
            &[ConditionUpdate::new(READY, false, "Starting", "")],
            Some(1),
            &at("2026-01-01T00:00:00Z"),
        );
        let same = merge(
            &first,
            &[ConditionUpdate::new(READY, false, "Starting", "again")],
            Some(2),
            &at("2026-01-01T00:01:00Z"),
        );
        assert_eq!(same[0].last_transition_time, at("2026-01-01T00:00:00Z"));
        assert_eq!(same[0].message, "again");
        let flipped = merge(
            &same,
            &[ConditionUpdate::new(READY, true, "Available", "")],
            Some(2),
            &at("2026-01-01T00:02:00Z"),
        );
        assert_eq!(flipped[0].last_transition_time, at("2026-01-01T00:02:00Z"));
    }

    #[test]
    fn conditions_not_updated_are_kept_and_order_is_stable() {
        let now = at("2026-01-01T00:00:00Z");
        let start = merge(
            &[],
            &[
                ConditionUpdate::new(DEGRADED, false, "AsExpected", ""),
                ConditionUpdate::new(READY, true, "Available", ""),
            ],
            None,
            &now,
        );
        let paused = merge(
            &start,
            &[ConditionUpdate::new(PROGRESSING, true, "Paused", "")],
            None,
            &now,
        );
        let types: Vec<_> = paused.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, PROGRESSING, DEGRADED]);
        assert_eq!(is_true(&paused, READY), Some(true));
    }
}
