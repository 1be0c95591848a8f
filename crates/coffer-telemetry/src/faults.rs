//! Fault points for the fault tests (a process killed at an exact step): with
//! `COFFER_FAULTS=<point>[=<n>][,<point>[=<n>]…]` the process aborts, as `kill -9` would (no
//! unwinding, no cleanup, no flush), the n-th time (default: the first) it passes that point.
//! Unset, as in production, a point costs one load of an initialised `OnceLock`.
//!
//! Points: `ledger.before_commit` (a group-commit batch written, its transaction still open),
//! `ledger.after_commit` (a group-commit batch committed, nobody answered yet),
//! `relay.after_confirm` (the broker confirmed a round, the outbox cursors not moved yet),
//! `listener.mid_poll` (a block scanned and its deposits recorded, its checkpoint not saved),
//! `listener.mid_unwind` (a re-org's deposits orphaned or reversed, the rolled-back cursor not
//! saved) and
//! `broadcaster.after_sign` (a withdrawal signed and stored, not sent). The fault harness
//! (docs/faults.md) arms each of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms fault points.
pub const ENV: &str = "COFFER_FAULTS";

struct Armed {
    name: String,
    /// Passes left before the abort.
    left: AtomicU64,
}

fn armed() -> &'static [Armed] {
    static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| std::env::var(ENV).map(|spec| parse(&spec)).unwrap_or_default())
}

fn parse(spec: &str) -> Vec<Armed> {
    spec.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|point| {
            let (name, nth) = point.split_once('=').unwrap_or((point, "1"));
            Armed {
                name: name.to_string(),
                left: AtomicU64::new(nth.parse().unwrap_or(1).max(1)),
            }
        })
        .collect()
}

/// Passes the fault point `name`: aborts the process if it is armed and its count is reached.
pub fn point(name: &str) {
    for armed in armed() {
        if armed.name == name && armed.left.fetch_sub(1, Ordering::SeqCst) == 1 {
            eprintln!("fault point {name}: aborting the process ({ENV})");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_names_points_and_their_passes() {
        let armed = parse("ledger.after_commit=3, relay.after_confirm");
        let read: Vec<(&str, u64)> = armed
            .iter()
            .map(|a| (a.name.as_str(), a.left.load(Ordering::SeqCst)))
            .collect();
        assert_eq!(read, vec![("ledger.after_commit", 3), ("relay.after_confirm", 1)]);
        assert!(parse("").is_empty());
        assert_eq!(
            parse("x=0")[0].left.load(Ordering::SeqCst),
            1,
            "at least one pass"
        );
    }
}
