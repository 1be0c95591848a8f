//! The bounded history a resuming stream client catches up from: the outbox itself.

use coffer_store::collections::OUTBOX;
use coffer_store::mongodb::bson::doc;
use coffer_store::{OutboxDoc, Store};
use futures::TryStreamExt;

use crate::EventsError;

/// The user's committed events after `after` (an event id), oldest first, at most `limit`.
///
/// Rows not yet marked published are included: they are committed, and a row the broker has
/// confirmed may still be waiting for its mark, so leaving them out could open a gap between
/// history and the live feed. The client dedupes by id. Dead letters are left out, as they never
/// reach the live feed either.
pub async fn missed_events(
    store: &Store,
    user_id: &str,
    after: &str,
    limit: u32,
) -> Result<Vec<OutboxDoc>, EventsError> {
    let rows = store
        .collection::<OutboxDoc>(OUTBOX)
        .find(doc! { "user_id": user_id, "_id": { "$gt": after }, "dead_lettered_at": null })
        .sort(doc! { "_id": 1 })
        .limit(i64::from(limit.clamp(1, 10_000)))
        .await?
        .try_collect()
        .await?;
    Ok(rows)
}
