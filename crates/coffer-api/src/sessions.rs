//! Whether the session an access token belongs to is still active.
//!
//! The truth is the session document in the database, so a revocation on one replica holds on
//! every replica. Each replica keeps the answer for at most `COFFER_SESSION_CHECK_SECONDS`
//! (default 2 s): a revoked session's access tokens and WebSockets stop working within that
//! time, at the cost of one read per active session per interval. A revocation is final, so
//! "revoked" is kept as long as the entry lives. The cache is bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use coffer_store::{Store, StoreError};

/// Most sessions remembered per replica; beyond it, stale entries go first, then all of them.
const ENTRIES_MAX: usize = 100_000;

pub struct SessionCheck {
    interval: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Clone, Copy)]
struct Entry {
    checked_at: Instant,
    active: bool,
}

impl SessionCheck {
    pub fn new(interval: Duration) -> Self {
        SessionCheck {
            interval,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether session `id` is active: from the cache when checked within the interval (or
    /// known revoked), otherwise from the database.
    pub async fn is_active(&self, store: &Store, id: &str) -> Result<bool, StoreError> {
        if let Some(entry) = self.lock().get(id).copied() {
            if !entry.active || entry.checked_at.elapsed() < self.interval {
                return Ok(entry.active);
            }
        }
        let now = coffer_store::codec::now();
        let active = store.session(id).await?.is_some_and(|s| s.is_active_at(now));
        self.remember(id, active);
        Ok(active)
    }

    /// Records a revocation made by this replica, so it holds here at once.
    pub fn forget(&self, id: &str) {
        self.remember(id, false);
    }

    /// Drops every "active" answer, so the next check of each session reads the database (after
    /// "sign out everywhere", whose sessions this replica does not know by id).
    pub fn recheck_all(&self) {
        self.lock().retain(|_, entry| !entry.active);
    }

    fn remember(&self, id: &str, active: bool) {
        let mut entries = self.lock();
        if entries.len() >= ENTRIES_MAX {
            let interval = self.interval;
            entries.retain(|_, e| e.checked_at.elapsed() < interval);
            if entries.len() >= ENTRIES_MAX {
                entries.clear();
            }
        }
        let entry = Entry {
            checked_at: Instant::now(),
            active,
        };
        entries.insert(id.to_string(), entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}
