//! Coffer's MongoDB adapter.
//!
//! The write path of money lives in [`money`]: one multi-document transaction per movement that
//! updates cached balances conditionally, inserts the balanced ledger entries, the transaction
//! record and its outbox events. Everything else here is plain reads and single-document writes.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod address_book;
pub mod adjustments;
pub mod audit;
pub mod audit_chain;
pub mod batch;
pub mod chain;
pub mod checkpoints;
pub mod codec;
pub mod conversions;
pub mod custody;
pub mod devices;
pub mod history;
pub mod idempotency;
pub mod inspect;
pub mod liabilities;
pub mod locks;
pub mod lookup;
pub mod metrics;
pub mod model;
pub mod money;
pub mod outbox;
pub mod pii;
pub mod process_sessions;
pub mod queries;
pub mod rail_deposits;
pub mod reconcile;
pub mod returns;
pub mod risk;
pub mod support;
pub mod sweeps;
mod telemetry;
pub mod tickets;
pub mod tokens;
pub mod transitions;
pub mod users;
pub mod verify;
pub mod withdrawals;

use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::{Client, Collection, Database, IndexModel};
use thiserror::Error;

pub use metrics::StoreMetrics;
pub use model::*;
/// The driver, for tests and benchmarks only (feature `testing`): no `mongodb` or `bson` type
/// crosses this crate's boundary in production code.
#[cfg(feature = "testing")]
pub use mongodb;

/// Collection names, in one place.
pub mod collections {
    pub const USERS: &str = "users";
    pub const REFRESH_TOKENS: &str = "refresh_tokens";
    pub const SESSIONS: &str = "sessions";
    pub const STREAM_TICKETS: &str = "stream_tickets";
    pub const WALLETS: &str = "wallets";
    pub const TRANSACTIONS: &str = "transactions";
    pub const LEDGER_ENTRIES: &str = "ledger_entries";
    pub const IDEMPOTENCY_KEYS: &str = "idempotency_keys";
    pub const OUTBOX: &str = "outbox";
    /// Per outbox partition: the last sequence number given out (written by the money path).
    pub const OUTBOX_SEQUENCES: &str = "outbox_sequences";
    /// Per outbox partition: the publisher's lease and cursor (written by publishers only).
    pub const OUTBOX_PARTITIONS: &str = "outbox_partitions";
    /// Live publisher replicas, for a fair share of partitions each.
    pub const OUTBOX_REPLICAS: &str = "outbox_replicas";
    /// Audit records, a MAC chain per shard (audit).
    pub const AUDIT_RECORDS: &str = "audit_records";
    /// Per audit shard: its last record's seq and MAC (moved in the record's transaction).
    pub const AUDIT_HEADS: &str = "audit_heads";
    pub const ADJUSTMENTS: &str = "adjustments";
    /// Payment-rail deposits held above their rail's caps, by `<rail>:<reference>`.
    pub const RAIL_DEPOSITS: &str = "rail_deposits";
    pub const RECONCILIATION_RUNS: &str = "reconciliation_runs";
    pub const VELOCITY: &str = "withdrawal_velocity";
    pub const DEVICES: &str = "devices";
    pub const DEVICE_NONCES: &str = "device_nonces";
    pub const ADDRESS_BOOK: &str = "address_book";
    pub const CHAIN_NONCES: &str = "chain_nonces";
    /// Per process: its session lease and the lsids it covers (process_sessions).
    pub const PROCESS_SESSIONS: &str = "process_sessions";
    /// Published proof-of-liabilities statements (kept) and the latest one's proofs per wallet.
    pub const LIABILITY_STATEMENTS: &str = "liability_statements";
    pub const LIABILITY_PROOFS: &str = "liability_proofs";
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("the credit would take the balance above the ledger limit")]
    BalanceLimit,
    #[error("not found")]
    NotFound,
    #[error("a transaction with this ledger key already exists")]
    DuplicateLedgerKey(Box<TransactionDoc>),
    #[error("already exists")]
    AlreadyExists,
    #[error("the transaction is no longer in the state the change expected")]
    StateConflict,
    #[error("the write could not commit within its bounded retries")]
    Contention,
    #[error("the Idempotency-Key is taken by another request")]
    IdempotencyKeyTaken,
    #[error("the movement would exceed its daily limit")]
    LimitExceeded,
    /// Not applied because another movement of its atomic unit was refused.
    #[error("not applied: another movement of the same atomic request was refused")]
    NotApplied,
    #[error("the proposer of an adjustment cannot decide it")]
    SelfApproval,
    #[error("the withdrawal is signed: only the chain can release it (cancel it instead)")]
    WithdrawalSigned,
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    #[error("the account's history at that time predates recorded balances")]
    HistoryUnavailable,
    #[error("stored data violates an invariant: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(DatabaseError),
    /// Personal data could not be sealed or opened (no keys, an unknown or wrong key).
    #[error("personal data: {0}")]
    Pii(#[from] pii::PiiError),
}

/// A driver error, opaque outside the store (no caller handles a `mongodb` type).
#[derive(Debug)]
pub struct DatabaseError(pub(crate) mongodb::error::Error);

impl std::fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl DatabaseError {
    /// The database could not be reached (no server selected, a broken connection): the caller
    /// answers "retry later", not "internal error".
    pub fn is_unavailable(&self) -> bool {
        use mongodb::error::ErrorKind;
        matches!(
            self.0.kind.as_ref(),
            ErrorKind::ServerSelection { .. } | ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. }
        )
    }
}

impl From<mongodb::error::Error> for StoreError {
    fn from(error: mongodb::error::Error) -> Self {
        StoreError::Database(DatabaseError(error))
    }
}

impl From<codec::DecodeError> for StoreError {
    fn from(e: codec::DecodeError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

impl From<mongodb::bson::ser::Error> for StoreError {
    fn from(e: mongodb::bson::ser::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// Whether a driver error is a duplicate key (code 11000), wherever the driver put it.
pub fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::InsertMany(e) => e.write_errors.iter().flatten().any(|w| w.code == 11000),
        ErrorKind::Command(e) => e.code == 11000,
        _ => false,
    }
}

/// Tunables of the write path, with bounds (TigerStyle: a limit on everything).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Attempts of one database transaction before answering "retry later".
    pub max_transaction_attempts: u32,
    /// Longest a writer waits for its wallets' in-process locks.
    pub lock_timeout: Duration,
    /// Base of the jittered exponential backoff between attempts.
    pub backoff_base: Duration,
    /// Stripes of the per-wallet lock array.
    pub lock_stripes: usize,
    /// Group commit of money movements (batch size, window, queue, attempts, timeout).
    pub batch: batch::BatchConfig,
    /// Records every query's filter for [`Store::explain_recorded`] (tests; off by default).
    pub query_log: Option<inspect::QueryLog>,
    /// A client span per database command (issue 8). Off by default even when traces are
    /// exported: the driver then decodes every command and reply (`COFFER_TRACE_DB_COMMANDS`).
    pub command_spans: bool,
    /// Tests only: a pause between consuming a refresh token and storing its successor, which
    /// widens the window a concurrent reuse races into (off by default).
    pub rotation_pause: Option<Duration>,
    /// How long this process's database sessions outlive it if it dies inside a transaction
    /// (renewed every quarter of it; others end them after it plus half of it): see
    /// [`process_sessions`].
    pub session_lease: Duration,
    /// The keys that MAC audit records (`COFFER_AUDIT_KEY`); without them every audited action
    /// is refused (fail closed).
    pub audit_keys: Option<audit::AuditKeys>,
    /// The keys that seal users' personal data and index their e-mails (`COFFER_PII_KEY`,
    /// `COFFER_PII_INDEX_KEY`); without them every read or write of a user is refused.
    pub pii: Option<pii::PiiKeys>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_transaction_attempts: 8,
            lock_timeout: Duration::from_secs(5),
            backoff_base: Duration::from_millis(5),
            lock_stripes: 4096,
            batch: batch::BatchConfig::default(),
            query_log: None,
            command_spans: false,
            rotation_pause: None,
            session_lease: Duration::from_secs(2),
            audit_keys: None,
            pii: None,
        }
    }
}

/// The handle every role shares: a client, its database, and the write path's state.
#[derive(Clone)]
pub struct Store {
    pub(crate) client: Client,
    pub(crate) db: Database,
    pub(crate) locks: std::sync::Arc<locks::WalletLocks>,
    pub(crate) config: StoreConfig,
    /// Assets whose platform accounts this process has already ensured.
    pub(crate) ensured_assets: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// The group-commit writer of this process (one per store, shared by its clones).
    pub(crate) committer: std::sync::Arc<batch::Committer>,
    /// Owners and assets of wallets seen (immutable facts; see [`Store::wallet_refs`]).
    pub(crate) wallet_refs:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, coffer_domain::WalletRef>>>,
    /// This process's session lease (shared by the store's clones).
    pub(crate) sessions: std::sync::Arc<process_sessions::SessionLease>,
    pub metrics: StoreMetrics,
}

impl Store {
    /// Connects (lazily: the driver dials on first use) to `uri` and uses database `database`.
    pub async fn connect(
        uri: &str,
        database: &str,
        config: StoreConfig,
        metrics: StoreMetrics,
    ) -> Result<Store, StoreError> {
        let mut options = mongodb::options::ClientOptions::parse(uri).await?;
        options.app_name.get_or_insert_with(|| "coffer".to_string());
        options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(10));
        let spans = config
            .command_spans
            .then(|| std::sync::Arc::new(telemetry::CommandSpans::default()));
        let log = config.query_log.clone();
        if spans.is_some() || log.is_some() {
            options.command_event_handler = Some(mongodb::event::EventHandler::callback(
                move |event: mongodb::event::command::CommandEvent| {
                    if let Some(log) = &log {
                        log.on_event(&event);
                    }
                    if let Some(spans) = &spans {
                        spans.on_event(event);
                    }
                },
            ));
        }
        let client = Client::with_options(options)?;
        let db = client.database(database);
        let locks = std::sync::Arc::new(locks::WalletLocks::new(config.lock_stripes));
        let sessions = process_sessions::SessionLease::new(
            db.clone(),
            config.session_lease,
            metrics.dead_sessions_ended.clone(),
        );
        Ok(Store {
            sessions,
            client,
            db,
            locks,
            config,
            metrics,
            ensured_assets: Default::default(),
            committer: Default::default(),
            wallet_refs: Default::default(),
        })
    }

    /// The raw database: for tests and benchmarks that seed or corrupt data on purpose
    /// (feature `testing`); production code goes through the typed functions of this crate.
    #[cfg(feature = "testing")]
    pub fn database(&self) -> &Database {
        &self.db
    }

    #[cfg(feature = "testing")]
    pub fn collection<T: Send + Sync>(&self, name: &str) -> Collection<T> {
        self.db.collection(name)
    }

    #[cfg(not(feature = "testing"))]
    pub(crate) fn collection<T: Send + Sync>(&self, name: &str) -> Collection<T> {
        self.db.collection(name)
    }

    /// Answers whether the database is reachable (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }

    /// Creates every index the code relies on. Idempotent: safe on every start of every role.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        use collections::*;
        let unique = |name: &str| {
            IndexOptions::builder()
                .unique(true)
                .name(name.to_string())
                .build()
        };
        let named = |name: &str| IndexOptions::builder().name(name.to_string()).build();
        let specs: Vec<(&str, Document, IndexOptions)> = vec![
            // The blind index of the (sealed) e-mail: one account per e-mail (pii).
            (USERS, doc! { "email_index": 1 }, unique(users::EMAIL_INDEX)),
            (REFRESH_TOKENS, doc! { "family_id": 1 }, named("family")),
            (
                REFRESH_TOKENS,
                doc! { "expires_at": 1 },
                IndexOptions::builder()
                    .name("expiry_ttl".to_string())
                    .expire_after(Duration::from_secs(0))
                    .build(),
            ),
            // "Sign out everywhere" and staff revocations find a user's sessions.
            (SESSIONS, doc! { "user_id": 1 }, named("by_user")),
            // A session past its absolute lifetime is removed (absent counts as ended).
            (
                SESSIONS,
                doc! { "expires_at": 1 },
                IndexOptions::builder()
                    .name("expiry_ttl".to_string())
                    .expire_after(Duration::from_secs(0))
                    .build(),
            ),
            (
                STREAM_TICKETS,
                doc! { "expires_at": 1 },
                IndexOptions::builder()
                    .name("expiry_ttl".to_string())
                    .expire_after(Duration::from_secs(0))
                    .build(),
            ),
            (WALLETS, doc! { "owner_key": 1 }, unique("owner_key_unique")),
            // A rail reference is held once.
            (
                collections::RAIL_DEPOSITS,
                doc! { "rail_key": 1 },
                unique("rail_key_unique"),
            ),
            (WALLETS, doc! { "user_id": 1, "_id": 1 }, named("by_user")),
            (
                TRANSACTIONS,
                doc! { "ledger_key": 1 },
                unique("ledger_key_unique"),
            ),
            (
                TRANSACTIONS,
                doc! { "participants": 1, "_id": -1 },
                named("by_participant"),
            ),
            // Whether a sender has paid a recipient before (the first-recipient rule).
            (
                TRANSACTIONS,
                doc! { "from_wallet_id": 1, "to_wallet_id": 1, "state": 1 },
                named("by_pair"),
            ),
            (
                LEDGER_ENTRIES,
                doc! { "account_id": 1, "_id": -1 },
                named("by_account"),
            ),
            (
                LEDGER_ENTRIES,
                doc! { "transaction_id": 1 },
                named("by_transaction"),
            ),
            // An account's history by sequence number: a statement's entries are a seq range.
            (
                LEDGER_ENTRIES,
                doc! { "account_id": 1, "seq": 1 },
                named(history::BY_ACCOUNT_SEQ),
            ),
            // The balance at an instant: the account's last entry posted by then (time and seq
            // order agree within an account, seq breaks ties).
            (
                LEDGER_ENTRIES,
                doc! { "account_id": 1, "created_at": 1, "seq": 1 },
                named(history::BY_ACCOUNT_TIME),
            ),
            (
                IDEMPOTENCY_KEYS,
                doc! { "created_at": 1 },
                IndexOptions::builder()
                    .name("retention_ttl".to_string())
                    .expire_after(idempotency::RETENTION)
                    .build(),
            ),
            // The publisher's reads: the next range of a partition, and its rows due for a retry.
            (
                OUTBOX,
                doc! { "partition": 1, "seq": 1 },
                unique("by_partition_seq"),
            ),
            (OUTBOX, doc! { "partition": 1, "retry_at": 1 }, named("retrying")),
            (OUTBOX_REPLICAS, doc! { "until": 1 }, named("live")),
            (PROCESS_SESSIONS, doc! { "until": 1 }, named("by_until")),
            // The stream's history query: equality fields first, then the range and sort key (the
            // ESR rule; a planner that needs every filter field in the index, as SecantusDB's
            // does, uses it too).
            (
                OUTBOX,
                doc! { "user_id": 1, "dead_lettered_at": 1, "_id": 1 },
                named("by_user_stream_v2"),
            ),
            (OUTBOX, doc! { "dead_lettered_at": 1 }, named("dead_letters")),
            (
                AUDIT_RECORDS,
                doc! { "shard": 1, "seq": 1 },
                unique("by_shard_seq"),
            ),
            (
                VELOCITY,
                doc! { "expires_at": 1 },
                IndexOptions::builder()
                    .name("expiry_ttl".to_string())
                    .expire_after(Duration::from_secs(0))
                    .build(),
            ),
            (DEVICES, doc! { "user_id": 1, "_id": 1 }, named("by_user")),
            // A device's nonce is accepted once, on every replica: the insert of a second copy
            // fails on this index (devices::NONCE_INDEX); the TTL drops it once its signature is
            // too old to be accepted anyway.
            (
                DEVICE_NONCES,
                doc! { "device_id": 1, "nonce": 1 },
                unique(devices::NONCE_INDEX),
            ),
            (
                ADDRESS_BOOK,
                doc! { "user_id": 1, "chain": 1, "address": 1 },
                unique(address_book::ADDRESS_INDEX),
            ),
            (
                DEVICE_NONCES,
                doc! { "expires_at": 1 },
                IndexOptions::builder()
                    .name("expiry_ttl".to_string())
                    .expire_after(Duration::from_secs(0))
                    .build(),
            ),
            (
                TRANSACTIONS,
                doc! { "kind": 1, "state": 1, "_id": 1 },
                named("by_kind_state"),
            ),
        ];
        for (collection, keys, options) in specs {
            let model = IndexModel::builder().keys(keys).options(options).build();
            self.db
                .collection::<Document>(collection)
                .create_index(model)
                .await?;
        }
        self.ensure_chain_indexes().await?;
        self.ensure_lookup_indexes().await?;
        self.ensure_liability_indexes().await?;
        self.ensure_conversion_indexes().await?;
        self.ensure_return_indexes().await?;
        self.ensure_sweep_indexes().await?;
        outbox::initialise(&self.db).await?;
        audit::initialise(&self.db).await?;
        self.ensure_admin_indexes().await
    }
}

/// A new time-ordered id (UUIDv7): ids sort by creation, which cursor pagination relies on.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
