//! The database sessions of a dead process are ended within seconds, not when the server's
//! transaction lifetime runs out (issue 15).
//!
//! A process killed inside a multi-document transaction leaves that transaction open on the
//! server, and its uncommitted writes keep every other writer of those documents in write
//! conflicts until the server aborts it (`transactionLifetimeLimitSeconds`, 60 s by default;
//! seen here: 30–40 s of `503 retry_later` for the wallets the dead API was writing).
//!
//! So every process that runs transactions holds a lease in `process_sessions`: one document
//! with the logical session ids (lsids) its transactions use and a time (`until`) it renews every
//! quarter of [`SessionLease::lease`]. Before a session runs a transaction, its lsid is in the
//! document (a write only the first time this process sees that lsid: the driver pools server
//! sessions, so there are as many as transactions at once). Every process also reaps: a lease
//! that has not been renewed for `lease` plus a grace of half of it belongs to a process that is
//! gone (or stalled), and its sessions are ended with `killSessions`, which aborts their open
//! transactions; then the document is deleted. A wallet the dead process was writing is free
//! again within `lease × 1.5 + lease / 4` (2 s lease: at most 3.5 s).
//!
//! Reaping a stalled process that is still alive costs it nothing it cannot recover: its open
//! transaction aborts (a transient error its writer retries; a commit in doubt is found as a
//! duplicate, never written twice), and its next renewal finds no document, so it registers its
//! sessions again. Clocks: `until` is written with the writer's clock and compared with the
//! reaper's; the grace absorbs skew up to half a lease (hosts run NTP).
//!
//! `killSessions` on another process's sessions needs the `killAnySession` privilege when the
//! server enforces access control (docs/operations.md); without it reaping is logged and counted
//! as failed, and recovery falls back to the server's transaction lifetime.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::{ClientSession, Database};

use crate::collections::PROCESS_SESSIONS;

/// Most leases one reaping pass ends.
const REAP_BATCH: i64 = 16;
/// Most lsids one process keeps registered (in memory and in its lease document); past it both
/// start again (the driver's pool never holds this many at once, but it replaces idle ones).
const MAX_KNOWN: usize = 10_000;

/// This process's lease and the lsids it covers.
pub struct SessionLease {
    id: String,
    db: Database,
    lease: Duration,
    known: Mutex<HashSet<Vec<u8>>>,
    running: AtomicBool,
    reaped: prometheus::IntCounter,
}

impl SessionLease {
    pub(crate) fn new(db: Database, lease: Duration, reaped: prometheus::IntCounter) -> Arc<Self> {
        Arc::new(SessionLease {
            id: crate::new_id(),
            db,
            lease: lease.max(Duration::from_millis(200)),
            known: Mutex::new(HashSet::new()),
            running: AtomicBool::new(false),
            reaped,
        })
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<Vec<u8>>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Covers `session` by this process's lease before it runs a transaction. Only a session this
    /// process has not registered yet costs a write.
    pub(crate) async fn cover(
        self: &Arc<Self>,
        session: &ClientSession,
    ) -> Result<(), mongodb::error::Error> {
        let key = lsid_bytes(session.id());
        let restart = {
            let mut known = self.known();
            if known.contains(&key) {
                return Ok(());
            }
            let full = known.len() >= MAX_KNOWN;
            if full {
                known.clear();
            }
            full
        };
        self.spawn_renewal();
        let lsid = session.id().clone();
        // The document's list is bounded with the set: when the set starts again, so does the
        // list (sessions still in use add themselves again before their next transaction).
        let update = match restart {
            false => doc! { "$set": { "until": self.until() }, "$addToSet": { "lsids": lsid } },
            true => doc! { "$set": { "until": self.until(), "lsids": [lsid] } },
        };
        self.db
            .collection::<Document>(PROCESS_SESSIONS)
            .update_one(doc! { "_id": &self.id }, update)
            .upsert(true)
            .await?;
        self.known().insert(key);
        Ok(())
    }

    fn until(&self) -> DateTime {
        DateTime::from_system_time(std::time::SystemTime::now() + self.lease)
    }

    /// Starts the renewal and reaping loop once; it stops when the store is dropped.
    fn spawn_renewal(self: &Arc<Self>) {
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(renew_and_reap(weak, self.lease / 4));
    }

    /// Renews this lease; when it was reaped meanwhile, forgets the lsids so that they register
    /// again (their transactions were aborted).
    async fn renew(&self) -> Result<(), mongodb::error::Error> {
        let outcome = self
            .db
            .collection::<Document>(PROCESS_SESSIONS)
            .update_one(
                doc! { "_id": &self.id },
                doc! { "$set": { "until": self.until() } },
            )
            .await?;
        if outcome.matched_count == 0 {
            tracing::warn!(
                "this process's session lease was reaped (it stalled past its lease); registering again"
            );
            self.known().clear();
        }
        Ok(())
    }

    /// Ends the sessions of leases past their time and grace; answers how many leases it ended.
    pub(crate) async fn reap(&self) -> Result<usize, mongodb::error::Error> {
        let grace = self.lease / 2;
        let cutoff = DateTime::from_system_time(std::time::SystemTime::now() - grace);
        let leases = self.db.collection::<Document>(PROCESS_SESSIONS);
        let expired: Vec<Document> = leases
            .find(doc! { "until": { "$lt": cutoff } })
            .limit(REAP_BATCH)
            .await?
            .try_collect()
            .await?;
        let mut ended = 0;
        // This process renews before it reaps, so its own lease is never past the cutoff here;
        // the check keeps it so even if renewing failed.
        for lease in expired
            .into_iter()
            .filter(|l| l.get_str("_id") != Ok(self.id.as_str()))
        {
            let lsids: Vec<Bson> = lease.get_array("lsids").cloned().unwrap_or_default();
            if !lsids.is_empty() {
                self.db
                    .client()
                    .database("admin")
                    .run_command(doc! { "killSessions": lsids })
                    .await?;
            }
            // Only the lease as read: a process that renewed meanwhile keeps its document.
            let filter = doc! { "_id": lease.get("_id").cloned().unwrap_or(Bson::Null),
            "until": lease.get("until").cloned().unwrap_or(Bson::Null) };
            leases.delete_one(filter).await?;
            self.reaped.inc();
            ended += 1;
        }
        Ok(ended)
    }
}

fn lsid_bytes(lsid: &Document) -> Vec<u8> {
    match lsid.get("id") {
        Some(Bson::Binary(binary)) => binary.bytes.clone(),
        other => format!("{other:?}").into_bytes(),
    }
}

async fn renew_and_reap(lease: Weak<SessionLease>, every: Duration) {
    let mut ticker = tokio::time::interval(every.max(Duration::from_millis(50)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        ticker.tick().await;
        let Some(lease) = lease.upgrade() else { return };
        if let Err(error) = lease.renew().await {
            tracing::warn!(%error, "renewing this process's session lease failed");
        }
        match lease.reap().await {
            Ok(ended) if ended > 0 => {
                tracing::info!(
                    leases = ended,
                    "ended the database sessions of processes that are gone"
                );
            }
            Ok(_) => {}
            Err(error) if !warned => {
                warned = true;
                tracing::warn!(%error, "ending a dead process's database sessions failed (needs killAnySession)");
            }
            Err(_) => {}
        }
    }
}
