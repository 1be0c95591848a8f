//! The bounded history a resuming stream client catches up from: the outbox itself.

use coffer_store::{OutboxDoc, Store};

use crate::EventsError;

/// The user's committed events after `after` (an event id), oldest first, at most `limit`.
///
/// Rows not yet published are included: they are committed, and leaving them out could open a
/// gap between history and the live feed. The client dedupes by id. Dead letters are left out,
/// as they never reach the live feed either.
pub async fn missed_events(
    store: &Store,
    user_id: &str,
    after: &str,
    limit: u32,
) -> Result<Vec<OutboxDoc>, EventsError> {
    Ok(store.stream_history(user_id, after, limit).await?)
}
