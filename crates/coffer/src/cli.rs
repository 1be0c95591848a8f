//! Command line and environment: one typed struct per role, validated at start.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand, ValueEnum};
use coffer_api::config::RateLimits;
use coffer_api::ApiConfig;
use secrecy::{ExposeSecret, SecretString};

#[derive(Parser)]
#[command(
    name = "coffer",
    version,
    about = "Coffer wallet backend: every role in one binary"
)]
pub struct Cli {
    /// Log format: json lines or text; unset, text on a terminal and json otherwise.
    #[arg(long, env = "COFFER_LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    /// A PEM file of CA certificates trusted besides the platform's store, by every outgoing TLS
    /// connection (https:// JSON-RPC and OTLP, amqps://), e.g. a private CA.
    #[arg(long, env = "COFFER_TLS_CA_FILE", global = true)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// `COFFER_LOG_FORMAT`: anything else is refused at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for machines: Kubernetes, log shippers).
    Json,
    /// Human-readable lines (for a terminal).
    Text,
}

impl LogFormat {
    /// The format asked for, else text when stderr is a terminal and JSON when it is not.
    pub fn resolve(asked: Option<LogFormat>, stderr_is_terminal: bool) -> coffer_telemetry::LogFormat {
        match asked {
            Some(LogFormat::Json) => coffer_telemetry::LogFormat::Json,
            Some(LogFormat::Text) => coffer_telemetry::LogFormat::Text,
            None if stderr_is_terminal => coffer_telemetry::LogFormat::Text,
            None => coffer_telemetry::LogFormat::Json,
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Api(ApiArgs),
    /// Run every built role in one process (local development).
    Dev(DevArgs),
    /// Follow a chain: deposits, confirmations, re-orgs (docs/chain.md).
    ChainListener(ChainListenerArgs),
    /// Relay the outbox to RabbitMQ (publisher confirms, per-wallet order, dead letters).
    OutboxPublisher(PublisherArgs),
    /// Prove the books on an interval; serves /healthz, /readyz and /metrics.
    Reconciler(ReconcilerArgs),
    /// Run the Kubernetes operator.
    Operator(coffer_operator::OperatorArgs),
    /// Print the CustomResourceDefinitions (`coffer crdgen > crds/coffer.yaml`).
    Crdgen,
    /// Print the API's OpenAPI 3.1 document (`coffer openapi > docs/openapi.json`).
    Openapi,
    /// Ledger tools.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Accounts: staff and service credentials.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Proof of liabilities (docs/solvency.md).
    Proof {
        #[command(subcommand)]
        command: ProofCommand,
    },
}

impl Command {
    pub fn role(&self) -> &'static str {
        match self {
            Command::Api(_) => "api",
            Command::Dev(_) => "dev",
            Command::ChainListener(_) => "chain-listener",
            Command::OutboxPublisher(_) => "outbox-publisher",
            Command::Reconciler(_) => "reconciler",
            Command::Operator(_) => "operator",
            Command::Crdgen => "crdgen",
            Command::Openapi => "openapi",
            Command::Ledger { .. } => "ledger",
            Command::Audit { .. } => "audit",
            Command::User { .. } => "user",
            Command::Proof { .. } => "proof",
        }
    }
}

#[derive(Subcommand)]
pub enum LedgerCommand {
    /// Recompute every balance from the ledger; exit 1 on any difference.
    Verify(DbArgs),
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Verify every audit shard's MAC chain (against the exported heads with `--heads`); exit 1
    /// naming the shard, seq and kind of the first break.
    Verify(AuditVerifyArgs),
}

#[derive(Args)]
pub struct AuditVerifyArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The heads export the reconciler appends to (`COFFER_AUDIT_HEADS_PATH`): finds a tail cut
    /// below an exported head, which the chains alone cannot show.
    #[arg(long)]
    pub heads: Option<std::path::PathBuf>,
}

/// Where and how often the reconciler exports every audit shard's head.
#[derive(Args, Clone)]
pub struct AuditExportArgs {
    /// File the reconciler appends one MACed line of every shard's head to (opened append-only,
    /// fsynced); put it where the database writer cannot edit it. Unset: no export.
    #[arg(long, env = "COFFER_AUDIT_HEADS_PATH")]
    pub audit_heads_path: Option<std::path::PathBuf>,
    /// Seconds between exported lines (1 to 86400).
    #[arg(long, env = "COFFER_AUDIT_EXPORT_INTERVAL_SECONDS", default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub audit_export_interval_seconds: u64,
}

#[derive(Subcommand)]
pub enum ProofCommand {
    /// Check a wallet's inclusion proof against a signed statement, offline; exit 0 when it
    /// verifies, 1 naming what does not.
    Verify(ProofVerifyArgs),
}

#[derive(Args)]
pub struct ProofVerifyArgs {
    /// The statement as served by `GET /v1/liabilities/{asset}` (JSON file).
    #[arg(long)]
    pub statement: std::path::PathBuf,
    /// The proof as served by `GET /v1/wallets/{id}/liability-proof` (JSON file).
    #[arg(long)]
    pub proof: std::path::PathBuf,
    /// The deployment's published Ed25519 public key (hex): the statement must be signed by it.
    /// Without it only the statement's own key is checked, which proves nothing about who signed.
    #[arg(long)]
    pub public_key: Option<String>,
}

/// The key that signs proof-of-liabilities statements (API and reconciler).
#[derive(Args, Clone)]
pub struct LiabilityArgs {
    /// Hex of the 32-byte Ed25519 seed that signs liabilities statements (a secret of the
    /// deployment). Unset: nothing is published.
    #[arg(long, env = "COFFER_LIABILITY_SIGNING_KEY", hide_env_values = true)]
    pub liability_signing_key: Option<SecretString>,
}

impl LiabilityArgs {
    pub fn key(&self) -> anyhow::Result<Option<coffer_api::liabilities::LiabilityKey>> {
        self.liability_signing_key
            .as_ref()
            .map(|secret| {
                if let Some(weakness) = weakness(secret.expose_secret().trim(), 64) {
                    bail!("COFFER_LIABILITY_SIGNING_KEY is refused: {weakness}");
                }
                coffer_api::liabilities::LiabilityKey::from_hex(secret.expose_secret())
                    .map_err(|e| anyhow::anyhow!("COFFER_LIABILITY_SIGNING_KEY: {e}"))
            })
            .transpose()
    }
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a staff account or service credential (password on stdin). A staff account is
    /// enrolled in TOTP at once: its otpauth:// URI is printed on standard output, once.
    Create(UserCreateArgs),
    /// Enroll a staff account in TOTP anew (a lost phone): prints the new otpauth:// URI on
    /// standard output, once; codes of the old secret stop working.
    MfaEnroll(UserMfaEnrollArgs),
    /// Seal the e-mails (and TOTP secrets) of users written before PII encryption, once; every
    /// role refuses to start while any remain (docs/security.md).
    EncryptPii(DbArgs),
}

#[derive(Args)]
pub struct UserMfaEnrollArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[arg(long)]
    pub email: String,
}

#[derive(Args, Clone)]
pub struct DbArgs {
    /// MongoDB replica set connection string.
    #[arg(
        long,
        env = "MONGODB_URI",
        default_value = "mongodb://127.0.0.1:27017/?directConnection=true",
        hide_env_values = true
    )]
    pub mongodb_uri: String,
    #[arg(long, env = "COFFER_DATABASE", default_value = "coffer")]
    pub database: String,
    /// Group commit: most money movements written in one database transaction.
    #[arg(long, env = "COFFER_BATCH_MAX_MOVEMENTS", default_value_t = 128,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_max_movements: u16,
    /// Group commit: longest a busy batch waits for more movements, in milliseconds.
    #[arg(long, env = "COFFER_BATCH_MAX_WAIT_MS", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(0..=100))]
    pub batch_max_wait_ms: u16,
    /// Longest a request waits for its movement to commit before it answers 503 retry_later.
    #[arg(long, env = "COFFER_MOVEMENT_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(100..=60_000))]
    pub movement_timeout_ms: u32,
    /// How long this process's database sessions outlive it when it dies inside a transaction:
    /// the lease it renews every quarter of this; other processes end a lease's sessions once it
    /// is this plus half of it old (docs/operations.md).
    #[arg(long, env = "COFFER_SESSION_LEASE_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u32).range(200..=60_000))]
    pub session_lease_ms: u32,
    /// The key that MACs audit records (at least 32 random bytes; a secret of the deployment,
    /// never in the database). Every role that connects needs it.
    #[arg(long, env = "COFFER_AUDIT_KEY", hide_env_values = true)]
    pub audit_key: SecretString,
    /// Earlier audit keys, comma-separated: records they MACed still verify (key rotation).
    #[arg(long, env = "COFFER_AUDIT_KEYS_PREVIOUS", hide_env_values = true)]
    pub audit_keys_previous: Option<SecretString>,
    /// The key that seals users' personal data (e-mail, TOTP secret): 64 hex digits of 32 random
    /// bytes, a secret of the deployment, never in the database. The roles that read or write
    /// users need it (api, dev, the user tools); refused when weak.
    #[arg(long, env = "COFFER_PII_KEY", hide_env_values = true)]
    pub pii_key: Option<SecretString>,
    /// Earlier PII keys, comma-separated: what they sealed still opens (key rotation).
    #[arg(long, env = "COFFER_PII_KEYS_PREVIOUS", hide_env_values = true)]
    pub pii_keys_previous: Option<SecretString>,
    /// The HMAC key of the e-mail's blind index (64 hex digits, not a PII key): look-ups by
    /// e-mail without decrypting. Needed with COFFER_PII_KEY.
    #[arg(long, env = "COFFER_PII_INDEX_KEY", hide_env_values = true)]
    pub pii_index_key: Option<SecretString>,
}

impl DbArgs {
    /// The audit keys these settings give; a weak key is refused naming the setting, never
    /// its value.
    pub fn audit_keys(&self) -> anyhow::Result<coffer_store::audit::AuditKeys> {
        use coffer_store::audit::AuditKey;
        let current = AuditKey::new(self.audit_key.expose_secret())
            .map_err(|e| anyhow::anyhow!("COFFER_AUDIT_KEY is refused: {e}"))?;
        let previous = self
            .audit_keys_previous
            .as_ref()
            .map(|keys| {
                keys.expose_secret()
                    .split(',')
                    .filter(|k| !k.trim().is_empty())
                    .map(AuditKey::new)
                    .collect()
            })
            .transpose()
            .map_err(|e| anyhow::anyhow!("COFFER_AUDIT_KEYS_PREVIOUS is refused: {e}"))?
            .unwrap_or_default();
        Ok(coffer_store::audit::AuditKeys::new(current, previous))
    }

    /// The PII keys these settings give: `None` when unset and `required` is false (a role that
    /// never touches users); a missing or weak key is refused naming the setting, never its value.
    pub fn pii_keys(&self, required: bool) -> anyhow::Result<Option<coffer_store::pii::PiiKeys>> {
        let (key, index) = match (&self.pii_key, &self.pii_index_key) {
            (None, None) if !required => return Ok(None),
            (Some(key), Some(index)) => (key, index),
            (None, _) => bail!("COFFER_PII_KEY is required: it seals users' e-mails (docs/security.md)"),
            (_, None) => bail!("COFFER_PII_INDEX_KEY is required with COFFER_PII_KEY (docs/security.md)"),
        };
        let previous: Vec<&str> = self
            .pii_keys_previous
            .as_ref()
            .map(|keys| {
                keys.expose_secret()
                    .split(',')
                    .filter(|k| !k.trim().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let keys = coffer_store::pii::PiiKeys::local(key.expose_secret(), &previous, index.expose_secret())?;
        Ok(Some(keys))
    }

    /// This process's session lease (`COFFER_SESSION_LEASE_MS`).
    pub fn session_lease(&self) -> Duration {
        Duration::from_millis(u64::from(self.session_lease_ms))
    }

    /// The group-commit bounds these flags set.
    pub fn batch(&self) -> coffer_store::batch::BatchConfig {
        coffer_store::batch::BatchConfig {
            max_movements: usize::from(self.batch_max_movements),
            max_wait: Duration::from_millis(u64::from(self.batch_max_wait_ms)),
            movement_timeout: Duration::from_millis(u64::from(self.movement_timeout_ms)),
            ..Default::default()
        }
    }
}

/// RabbitMQ: where events go (the publisher) and come from (the API's stream consumer).
#[derive(Args, Clone)]
pub struct AmqpArgs {
    /// AMQP 0-9-1 URI; carries credentials, never logged.
    #[arg(
        long,
        env = "AMQP_URI",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_uri: String,
    /// The topic exchange of events (routing key = event type).
    #[arg(long, env = "COFFER_EVENTS_EXCHANGE", default_value = coffer_events::DEFAULT_EXCHANGE)]
    pub events_exchange: String,
}

#[derive(Args)]
pub struct PublisherArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Serves /healthz, /readyz and /metrics.
    #[arg(long, env = "COFFER_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: String,
    /// Rows per claim (1..=1000).
    #[arg(long, env = "COFFER_OUTBOX_BATCH_SIZE", default_value_t = 500,
        value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch_size: u32,
    /// Failed attempts before a row is dead-lettered (1..=100).
    #[arg(long, env = "COFFER_OUTBOX_MAX_ATTEMPTS", default_value_t = 5,
        value_parser = clap::value_parser!(i32).range(1..=100))]
    pub max_attempts: i32,
    /// Seconds a partition lease holds (10..=600), renewed every third of it; a crashed
    /// replica's partitions are taken over after it.
    #[arg(long, env = "COFFER_OUTBOX_LEASE_SECONDS", default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(10..=600))]
    pub lease_seconds: u64,
}

impl PublisherArgs {
    /// The relay configuration, validated; `owner` names this replica.
    pub fn relay_config(&self, owner: &str) -> anyhow::Result<coffer_events::RelayConfig> {
        let mut config = coffer_events::RelayConfig::new(&self.amqp.events_exchange, owner);
        config.batch_size = self.batch_size;
        config.max_attempts = self.max_attempts;
        config.lease = Duration::from_secs(self.lease_seconds);
        Ok(config)
    }
}

/// The role of an account made with `coffer user create`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UserRole {
    User,
    Support,
    Finance,
    Engineering,
    Admin,
    Payment,
    /// The KYC provider's service account: sets users' verification tiers.
    Kyc,
}

impl From<UserRole> for coffer_store::Role {
    fn from(role: UserRole) -> Self {
        match role {
            UserRole::User => coffer_store::Role::User,
            UserRole::Support => coffer_store::Role::Support,
            UserRole::Finance => coffer_store::Role::Finance,
            UserRole::Engineering => coffer_store::Role::Engineering,
            UserRole::Admin => coffer_store::Role::Admin,
            UserRole::Payment => coffer_store::Role::Payment,
            UserRole::Kyc => coffer_store::Role::Kyc,
        }
    }
}

#[derive(Args)]
pub struct UserCreateArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[arg(long)]
    pub email: String,
    #[arg(long, value_enum)]
    pub role: UserRole,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

/// Where a role reads the asset catalog, and how it hears of changes.
#[derive(Args, Clone)]
pub struct AssetsArgs {
    /// The asset catalog the role starts with (AssetsFile v1 JSON); re-read every 2 s when it
    /// changes, unless --assets-config-map is set.
    #[arg(long, env = "COFFER_ASSETS_FILE")]
    pub assets_file: std::path::PathBuf,
    /// Follow this ConfigMap (`namespace/name`, key assets.json) through the Kubernetes API
    /// instead of re-reading the file: a change arrives with the watch event, not after the
    /// kubelet's sync period. The operator sets it.
    #[arg(long, env = "COFFER_ASSETS_CONFIGMAP")]
    pub assets_config_map: Option<coffer_operator::catalog::ConfigMapRef>,
}

#[derive(Args)]
pub struct ChainListenerArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The chain name, as assets declare it (e.g. ethereum-dev).
    #[arg(long)]
    pub chain: String,
    /// The node's JSON-RPC endpoint (http:// or https://).
    #[arg(long, env = "ETH_RPC_URL", hide_env_values = true)]
    pub eth_rpc_url: String,
    /// Pause between polls once caught up (100..=60000 ms).
    #[arg(long, env = "COFFER_POLL_INTERVAL_MS", default_value_t = 2000,
        value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub poll_interval_ms: u64,
    /// First block to scan when there is no checkpoint (default: the node's head).
    #[arg(long, env = "COFFER_START_BLOCK")]
    pub start_block: Option<u64>,
    /// Blocks per poll (1..=1000).
    #[arg(long, env = "COFFER_MAX_BLOCKS_PER_POLL", default_value_t = 50,
        value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_blocks_per_poll: u64,
    #[command(flatten)]
    pub assets: AssetsArgs,
    /// /healthz, /readyz and /metrics.
    #[arg(long, env = "COFFER_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: String,
    /// The hot wallet's private key file (hex; a mounted Secret). When set, this process also
    /// runs the withdrawal broadcaster of the chain. Development signer: production plugs a KMS
    /// or HSM behind the same `Signer` interface.
    #[arg(long, env = "COFFER_SIGNER_KEY_FILE")]
    pub signer_key_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub replacement: ReplacementArgs,
    #[command(flatten)]
    pub sweep: SweepArgs,
}

/// Sweeping deposit addresses to the hot wallet (docs/chain.md, "Sweeping deposit addresses").
#[derive(Args, Clone)]
pub struct SweepArgs {
    /// The account-level extended private key `m/44'/60'/0'` of the deposit addresses (a file,
    /// a mounted Secret; never logged). When set together with `--signer-key-file`, this
    /// process also sweeps the chain's coin and tokens from deposit addresses to the hot wallet.
    /// Development signer: production plugs a KMS or HSM behind `DepositKeySigner`.
    #[arg(long, env = "COFFER_DEPOSIT_XPRV_FILE")]
    pub deposit_xprv_file: Option<std::path::PathBuf>,
    /// The account xpub the API derives deposit addresses from; the xprv must match it.
    #[arg(long, env = "COFFER_DEPOSIT_XPUB", hide_env_values = true)]
    pub deposit_xpub: Option<String>,
    /// Balances below this (in the coin's units, e.g. 0.01) are dust and not swept.
    #[arg(long, env = "COFFER_SWEEP_MIN_AMOUNT", default_value = "0.01")]
    pub sweep_min_amount: String,
    /// Token balances below this (in each token's units) are not swept: a token sweep costs
    /// two transactions' gas (the hot wallet's funding, then the transfer).
    #[arg(long, env = "COFFER_SWEEP_TOKEN_MIN_AMOUNT", default_value = "10")]
    pub sweep_token_min_amount: String,
    /// Deposit addresses looked at per round (1..=1000).
    #[arg(long, env = "COFFER_SWEEP_BATCH_MAX", default_value_t = 50,
        value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub sweep_batch_max: u64,
    /// A round is skipped while base fee + tip is above this (gwei per gas, 1..=10000).
    #[arg(long, env = "COFFER_SWEEP_GAS_PRICE_CEILING_GWEI", default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub sweep_gas_price_ceiling_gwei: u64,
}

#[derive(Args)]
pub struct ApiArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[arg(long, env = "COFFER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Serve /healthz, /readyz and /metrics on this address too, and /metrics no longer on the
    /// API's port (so a public ingress never exposes it). Unset: /metrics on the API's port.
    #[arg(long, env = "COFFER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// HMAC key of access tokens (at least 32 bytes). No default: there are no default secrets.
    #[arg(long, env = "COFFER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: SecretString,
    #[command(flatten)]
    pub assets: AssetsArgs,
    /// Lifetime of access tokens (60..=3600 s).
    #[arg(long, env = "COFFER_ACCESS_TOKEN_TTL_SECONDS", default_value_t = 900,
        value_parser = clap::value_parser!(u64).range(60..=3600))]
    pub access_token_ttl_seconds: u64,
    /// Lifetime of refresh tokens (1 hour to 90 days).
    #[arg(long, env = "COFFER_REFRESH_TOKEN_TTL_SECONDS", default_value_t = 30 * 24 * 3600,
        value_parser = clap::value_parser!(u64).range(3600..=90 * 24 * 3600))]
    pub refresh_token_ttl_seconds: u64,
    /// Absolute lifetime of a session (1 hour to 365 days): no refresh extends it.
    #[arg(long, env = "COFFER_SESSION_LIFETIME_SECONDS", default_value_t = 30 * 24 * 3600,
        value_parser = clap::value_parser!(u64).range(3600..=365 * 24 * 3600))]
    pub session_lifetime_seconds: u64,
    /// Absolute lifetime of a support-console session (5 minutes to 24 hours).
    #[arg(long, env = "COFFER_CONSOLE_SESSION_SECONDS", default_value_t = 8 * 3600,
        value_parser = clap::value_parser!(u64).range(300..=24 * 3600))]
    pub console_session_seconds: u64,
    /// Send the support console's cookie without `Secure`, so a browser keeps it over plain
    /// HTTP: local development only (scripts/dev-up sets it); never behind TLS.
    #[arg(long, env = "COFFER_CONSOLE_INSECURE_COOKIE")]
    pub console_insecure_cookie: bool,
    /// How long a replica may answer "this session is active" from memory (0 to 10 s): the
    /// longest a revoked session's access tokens and streams keep working.
    #[arg(long, env = "COFFER_SESSION_CHECK_SECONDS", default_value_t = 2,
        value_parser = clap::value_parser!(u64).range(0..=10))]
    pub session_check_seconds: u64,
    /// Requests to /v1/auth/* per client IP per minute (1..=1000000).
    #[arg(long, env = "COFFER_RATE_AUTH_PER_IP_PER_MINUTE", default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_auth_per_ip_per_minute: u32,
    /// Money requests per user per minute (1..=1000000).
    #[arg(long, env = "COFFER_RATE_MONEY_PER_USER_PER_MINUTE", default_value_t = 120,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_money_per_user_per_minute: u32,
    /// Money requests per client IP per minute (1..=1000000).
    #[arg(long, env = "COFFER_RATE_MONEY_PER_IP_PER_MINUTE", default_value_t = 600,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_money_per_ip_per_minute: u32,
    /// Read requests and stream upgrades per user per minute (1..=1000000).
    #[arg(long, env = "COFFER_RATE_READS_PER_USER_PER_MINUTE", default_value_t = 600,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_reads_per_user_per_minute: u32,
    /// Read requests and stream upgrades per client IP per minute (1..=1000000).
    #[arg(long, env = "COFFER_RATE_READS_PER_IP_PER_MINUTE", default_value_t = 1200,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_reads_per_ip_per_minute: u32,
    /// Failed logins of one account from one client network (IPv4 address, IPv6 /64) before
    /// that pair waits out the window (1..=1000); other networks, the owner's, are unaffected.
    #[arg(long, env = "COFFER_LOGIN_FAILURES_MAX", default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub login_failures_max: u32,
    /// The window of COFFER_LOGIN_FAILURES_MAX (60..=86400 s).
    #[arg(long, env = "COFFER_LOGIN_FAILURE_WINDOW_SECONDS", default_value_t = 900,
        value_parser = clap::value_parser!(u64).range(60..=86_400))]
    pub login_failure_window_seconds: u64,
    /// Password hashes computed at once (1..=256); beyond it, 503 retry_later with Retry-After.
    #[arg(long, env = "COFFER_PASSWORD_HASHING_CONCURRENT_MAX", default_value_t = 4,
        value_parser = clap::value_parser!(u32).range(1..=256))]
    pub password_hashing_concurrent_max: u32,
    /// Trust this header (e.g. x-forwarded-for) for the client IP; only behind a proxy you run.
    #[arg(long, env = "COFFER_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,
    /// The proxies in front of the API, comma-separated networks (`10.0.0.0/8,fd00::/8`): the
    /// client IP is the right-most hop of the header outside them. Unset: the TCP peer is the one
    /// trusted proxy.
    #[arg(long, env = "COFFER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<coffer_api::limits::Cidr>,
    #[command(flatten)]
    pub reconcile: ReconcileArgs,
    /// The BIP44 account xpub (m/44'/60'/0') deposit addresses derive from; public key only.
    #[arg(long, env = "COFFER_DEPOSIT_XPUB", hide_env_values = true)]
    pub deposit_xpub: Option<String>,
    /// Seconds a newly registered device waits before it is trusted (0 to 30 days).
    #[arg(long, env = "COFFER_DEVICE_TRUST_DELAY_SECONDS", default_value_t = 24 * 3600,
        value_parser = clap::value_parser!(u64).range(0..=30 * 24 * 3600))]
    pub device_trust_delay_seconds: u64,
    /// Seconds a saved withdrawal address waits before withdrawals may go to it (0 to 30 days).
    #[arg(long, env = "COFFER_ADDRESS_COOLING_OFF_SECONDS", default_value_t = 24 * 3600,
        value_parser = clap::value_parser!(u64).range(0..=30 * 24 * 3600))]
    pub address_cooling_off_seconds: u64,
    /// The platform's own addresses (hot wallets), comma-separated: no user may save them.
    #[arg(long, env = "COFFER_PLATFORM_ADDRESSES", value_delimiter = ',')]
    pub platform_addresses: Vec<String>,
    /// How many seconds a device signature's timestamp may be off the server's clock (30 to 900).
    #[arg(long, env = "COFFER_DEVICE_SIGNATURE_MAX_AGE_SECONDS", default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(30..=900))]
    pub device_signature_max_age_seconds: u64,
    /// A withdrawal needs a password login at most this many seconds ago (60 to 86400).
    #[arg(long, env = "COFFER_WITHDRAWAL_REAUTH_SECONDS", default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(60..=86_400))]
    pub withdrawal_reauth_seconds: u64,
    /// The verification tier of a user the KYC provider has not assessed yet: unverified (no
    /// money out), basic or full.
    #[arg(long, env = "COFFER_KYC_DEFAULT_TIER", default_value = "unverified",
        value_parser = ["unverified", "basic", "full"])]
    pub kyc_default_tier: String,
    /// The share (0 to 100) of an asset's daily limits a user of the basic tier gets.
    #[arg(long, env = "COFFER_KYC_BASIC_LIMIT_PERCENT", default_value_t = 10,
        value_parser = clap::value_parser!(u8).range(0..=100))]
    pub kyc_basic_limit_percent: u8,
    /// The node of each chain that provider webhooks are checked against, `chain=url,…`
    /// (http:// or https://). A webhook event of a chain without one records nothing (422).
    #[arg(long, env = "COFFER_CHAIN_RPC_URLS", hide_env_values = true)]
    pub chain_rpc_urls: Option<String>,
    #[command(flatten)]
    pub liabilities: LiabilityArgs,
    /// Conversion rates offered, `FROM:TO=RATE,…` (whole TO units per whole FROM unit, exact
    /// decimals; each direction its own entry). Default: the dev table (ETH and USDT).
    #[arg(long, env = "COFFER_FX_RATES", default_value = coffer_domain::conversion::DEV_RATES)]
    pub fx_rates: String,
    /// The spread taken from every configured rate, in basis points (0..=1000).
    #[arg(long, env = "COFFER_FX_SPREAD_BPS", default_value_t = coffer_domain::conversion::DEV_SPREAD_BPS,
        value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub fx_spread_bps: u32,
    /// How long a conversion quote can be executed, in seconds (1..=300).
    #[arg(long, env = "COFFER_QUOTE_TTL_SECONDS", default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=300))]
    pub quote_ttl_seconds: u64,
}

/// When the broadcaster re-signs a stuck withdrawal (same nonce, fees raised by at least 12.5 %).
#[derive(Args, Clone, Copy)]
pub struct ReplacementArgs {
    /// A broadcast withdrawal unmined this long is replaced (10..=86400 s).
    #[arg(long, env = "COFFER_WITHDRAWAL_REPLACE_AFTER_SECONDS", default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(10..=86_400))]
    pub replace_after_seconds: u64,
    /// The highest max fee per gas any version may offer (1..=100000 gwei).
    #[arg(long, env = "COFFER_MAX_FEE_PER_GAS_CAP_GWEI", default_value_t = 500,
        value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_fee_per_gas_cap_gwei: u64,
}

impl ReplacementArgs {
    pub fn policy(&self) -> coffer_domain::replacement::ReplacementPolicy {
        coffer_domain::replacement::ReplacementPolicy {
            stuck_after: std::time::Duration::from_secs(self.replace_after_seconds),
            max_fee_per_gas_cap: u128::from(self.max_fee_per_gas_cap_gwei) * 1_000_000_000,
        }
    }
}

/// `coffer dev`: the API's settings, plus the chain side it runs beside it.
#[derive(Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Runs a chain listener per chain of the catalog when this node answers.
    #[arg(long, env = "ETH_RPC_URL", hide_env_values = true)]
    pub eth_rpc_url: Option<String>,
    /// Also runs the withdrawal broadcaster with this hot-wallet key file.
    #[arg(long, env = "COFFER_SIGNER_KEY_FILE")]
    pub signer_key_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub replacement: ReplacementArgs,
}

/// Limits of reconciliation runs (the reconciler role and on-demand runs through the API).
#[derive(Args, Clone)]
pub struct ReconcileArgs {
    /// Override how long a transaction may stay in a state, e.g. `pending_broadcast=900,confirming=7200`.
    /// Defaults: created 900, pending_broadcast 900, broadcasted 3600, confirming 7200,
    /// retryable 3600, manual_review 259200 seconds.
    #[arg(long, env = "COFFER_RECONCILE_STUCK_LIMITS")]
    pub reconcile_stuck_limits: Option<String>,
    /// How old (seconds, 1..=604800) the oldest unpublished outbox event may be.
    #[arg(long, env = "COFFER_RECONCILE_OUTBOX_LIMIT_SECONDS", default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..=7 * 24 * 3600))]
    pub reconcile_outbox_limit_seconds: u64,
    /// How often (seconds, 0..=604800) a run is a full pass over every ledger entry; the runs
    /// between verify each account from its checkpoint on. 0: every run is full.
    #[arg(long, env = "COFFER_RECONCILE_FULL_INTERVAL_SECONDS", default_value_t = 86_400,
        value_parser = clap::value_parser!(u64).range(0..=7 * 24 * 3600))]
    pub reconcile_full_interval_seconds: u64,
}

impl ReconcileArgs {
    pub fn config(&self) -> anyhow::Result<coffer_store::reconcile::ReconcileConfig> {
        let mut config = coffer_store::reconcile::ReconcileConfig::default();
        if let Some(text) = &self.reconcile_stuck_limits {
            config = config
                .with_state_limits(text)
                .map_err(|e| anyhow::anyhow!("COFFER_RECONCILE_STUCK_LIMITS: {e}"))?;
        }
        config.outbox_limit = Duration::from_secs(self.reconcile_outbox_limit_seconds);
        config.full_interval = Duration::from_secs(self.reconcile_full_interval_seconds);
        Ok(config)
    }
}

#[derive(Args)]
pub struct ReconcilerArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Serves /healthz, /readyz and /metrics.
    #[arg(long, env = "COFFER_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: String,
    /// Seconds between runs (10 to 86400); the first run starts at once.
    #[arg(long, env = "COFFER_RECONCILE_INTERVAL_SECONDS", default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(10..=86_400))]
    pub interval_seconds: u64,
    #[command(flatten)]
    pub limits: ReconcileArgs,
    /// Seconds between proof-of-liabilities statements of every asset (60 to 604800); unset:
    /// none are published on a schedule. Needs COFFER_LIABILITY_SIGNING_KEY.
    #[arg(long, env = "COFFER_LIABILITY_PUBLISH_INTERVAL_SECONDS",
        value_parser = clap::value_parser!(u64).range(60..=7 * 24 * 3600))]
    pub liability_publish_interval_seconds: Option<u64>,
    #[command(flatten)]
    pub liabilities: LiabilityArgs,
    #[command(flatten)]
    pub audit_export: AuditExportArgs,
    #[command(flatten)]
    pub reserves: ReservesArgs,
}

/// Reserves read from the chain for the custody check (docs/chain.md, "Reserves").
#[derive(Args, Clone)]
pub struct ReservesArgs {
    /// `chain=url,…`: the nodes of the chains whose custody is checked against the chain; unset:
    /// the custody check is skipped.
    #[arg(
        long = "reserves-rpc-urls",
        env = "COFFER_CHAIN_RPC_URLS",
        hide_env_values = true
    )]
    pub chain_rpc_urls: Option<String>,
    /// `chain=0x…,…`: hot wallets counted besides every one that has signed on the chain.
    #[arg(long, env = "COFFER_HOT_WALLET_ADDRESSES")]
    pub hot_wallet_addresses: Option<String>,
    /// The asset catalog (AssetsFile v1 JSON); needed with the RPC URLs.
    #[arg(long = "reserves-assets-file", env = "COFFER_ASSETS_FILE")]
    pub assets_file: Option<std::path::PathBuf>,
}

impl ReservesArgs {
    /// The nodes to read, by chain (the URLs are never repeated in an error).
    pub fn rpcs(
        &self,
        roots: &coffer_tls::TlsRoots,
    ) -> anyhow::Result<std::collections::BTreeMap<String, coffer_chain::rpc::Rpc>> {
        chain_rpcs(self.chain_rpc_urls.as_deref(), roots)
    }

    /// The configured hot wallets of `chain`.
    pub fn hot_wallets(&self, chain: &str) -> anyhow::Result<Vec<String>> {
        let mut found = Vec::new();
        for entry in self
            .hot_wallet_addresses
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .filter(|e| !e.trim().is_empty())
        {
            let Some((of, address)) = entry.trim().split_once('=') else {
                bail!("COFFER_HOT_WALLET_ADDRESSES: {entry:?} is not chain=address");
            };
            let hex = address.strip_prefix("0x").unwrap_or_default();
            if hex.len() != 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("COFFER_HOT_WALLET_ADDRESSES: {address:?} is not an address");
            }
            if of == chain {
                found.push(address.to_lowercase());
            }
        }
        Ok(found)
    }
}

/// Webhook secrets from `COFFER_WEBHOOK_SECRET_<PROVIDER>` (provider lower-cased, `_` → `-`).
fn webhook_secrets() -> std::collections::BTreeMap<String, SecretString> {
    std::env::vars()
        .filter_map(|(name, value)| {
            let provider = name.strip_prefix("COFFER_WEBHOOK_SECRET_")?;
            let provider = provider.to_ascii_lowercase().replace('_', "-");
            (!provider.is_empty() && !value.is_empty()).then(|| (provider, SecretString::from(value)))
        })
        .collect()
}

/// `chain=url,…` into a client per chain; the URLs (which may carry a provider's key) are never
/// repeated in an error.
fn chain_rpcs(
    text: Option<&str>,
    roots: &coffer_tls::TlsRoots,
) -> anyhow::Result<std::collections::BTreeMap<String, coffer_chain::rpc::Rpc>> {
    let mut rpcs = std::collections::BTreeMap::new();
    for entry in text
        .unwrap_or_default()
        .split(',')
        .filter(|e| !e.trim().is_empty())
    {
        let Some((chain, url)) = entry.trim().split_once('=') else {
            bail!("COFFER_CHAIN_RPC_URLS: an entry is not chain=url");
        };
        let rpc = coffer_chain::rpc::Rpc::connect(url, roots)
            .map_err(|e| anyhow::anyhow!("COFFER_CHAIN_RPC_URLS, chain {chain}: {e}"))?;
        if rpcs.insert(chain.to_string(), rpc).is_some() {
            bail!("COFFER_CHAIN_RPC_URLS: chain {chain} is named twice");
        }
    }
    Ok(rpcs)
}

/// Secrets nobody should deploy (compared case-insensitively, ignoring `-`, `_` and spaces).
const KNOWN_DEFAULTS: [&str; 12] = [
    "secret", "password", "changeme", "default", "admin", "test", "coffer", "guest", "letmein", "123456",
    "qwerty", "passw0rd",
];

/// Why `secret` is too weak to start with, if it is: shorter than `min_bytes`, a known default,
/// or one short pattern repeated. Never says what the secret is.
pub fn weakness(secret: &str, min_bytes: usize) -> Option<String> {
    let normalised: String = secret
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | ' '))
        .collect::<String>()
        .to_lowercase();
    if KNOWN_DEFAULTS.contains(&normalised.as_str()) {
        return Some("a well-known default".into());
    }
    if secret.len() < min_bytes {
        return Some(format!("shorter than {min_bytes} bytes"));
    }
    if coffer_store::audit::is_repeated_pattern(secret.as_bytes()) {
        return Some("one short pattern repeated, not a random secret".into());
    }
    None
}

impl ApiArgs {
    pub fn api_config(&self, roots: &coffer_tls::TlsRoots) -> anyhow::Result<ApiConfig> {
        if let Some(weakness) = weakness(self.jwt_secret.expose_secret(), 32) {
            bail!("COFFER_JWT_SECRET is refused: {weakness}");
        }
        let mut config = ApiConfig::new(self.jwt_secret.clone());
        config.access_token_ttl = Duration::from_secs(self.access_token_ttl_seconds);
        config.refresh_token_ttl = Duration::from_secs(self.refresh_token_ttl_seconds);
        config.session_lifetime = Duration::from_secs(self.session_lifetime_seconds);
        config.session_check_interval = Duration::from_secs(self.session_check_seconds);
        config.console_session_lifetime = Duration::from_secs(self.console_session_seconds);
        config.console_cookie_secure = !self.console_insecure_cookie;
        config.rate_limits = RateLimits {
            auth_per_ip_per_minute: self.rate_auth_per_ip_per_minute,
            money_per_user_per_minute: self.rate_money_per_user_per_minute,
            money_per_ip_per_minute: self.rate_money_per_ip_per_minute,
            reads_per_user_per_minute: self.rate_reads_per_user_per_minute,
            reads_per_ip_per_minute: self.rate_reads_per_ip_per_minute,
            login_failures_max: self.login_failures_max,
            login_failure_window: Duration::from_secs(self.login_failure_window_seconds),
            password_hashing_concurrent_max: self.password_hashing_concurrent_max as usize,
        };
        config.client_ip_header = self.client_ip_header.as_ref().map(|h| h.to_ascii_lowercase());
        config.trusted_proxies = self.trusted_proxies.clone();
        config.reconcile = self.reconcile.config()?;
        if let Some(xpub) = &self.deposit_xpub {
            let keys = coffer_chain::hd::DepositKeys::from_xpub(xpub).map_err(|e| anyhow::anyhow!("{e}"))?;
            config.deposit_keys = Some(keys);
        }
        config.device_trust_delay = Duration::from_secs(self.device_trust_delay_seconds);
        config.withdrawal_reauth_window = Duration::from_secs(self.withdrawal_reauth_seconds);
        config.device_signature_max_age = Duration::from_secs(self.device_signature_max_age_seconds);
        config.address_cooling_off = Duration::from_secs(self.address_cooling_off_seconds);
        config.kyc_default_tier = coffer_domain::policy::Tier::parse(&self.kyc_default_tier)
            .ok_or_else(|| anyhow::anyhow!("COFFER_KYC_DEFAULT_TIER: unverified, basic or full"))?;
        config.tier_limits = coffer_domain::policy::TierLimits {
            basic_percent: self.kyc_basic_limit_percent,
        };
        for address in self.platform_addresses.iter().filter(|a| !a.trim().is_empty()) {
            let address = coffer_api::address_book::parse_address(address.trim(), "address")
                .map_err(|_| anyhow::anyhow!("COFFER_PLATFORM_ADDRESSES: {address} is not an address"))?;
            config.platform_addresses.push(address);
        }
        config.webhook_secrets = webhook_secrets();
        config.metrics_on_api_port = self.metrics_listen.is_none();
        config.chain_rpcs = chain_rpcs(self.chain_rpc_urls.as_deref(), roots)?;
        config.liability_signing_key = self.liabilities.key()?;
        let rates = coffer_domain::conversion::RateTable::parse(&self.fx_rates, self.fx_spread_bps)
            .map_err(|e| anyhow::anyhow!("COFFER_FX_RATES: {e}"))?;
        config.fx = coffer_api::conversions::FxConfig {
            rates: std::sync::Arc::new(rates),
            quote_ttl: Duration::from_secs(self.quote_ttl_seconds),
        };
        for (provider, secret) in &config.webhook_secrets {
            if let Some(weakness) = weakness(secret.expose_secret(), 16) {
                let variable = provider.to_ascii_uppercase().replace('-', "_");
                bail!("COFFER_WEBHOOK_SECRET_{variable} is refused: {weakness}");
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn weak_secrets_are_named_by_their_weakness_never_their_value() {
        assert_eq!(weakness("Change-Me", 32).as_deref(), Some("a well-known default"));
        assert_eq!(weakness("tiny-k3y", 32).as_deref(), Some("shorter than 32 bytes"));
        let repeated = "0123456789abcdef".repeat(2);
        assert!(weakness(&repeated, 32).unwrap().contains("repeated"));
        assert_eq!(weakness("processes-test-secret-0123456789abcdef", 32), None);
        for secret in ["Change-Me", "tiny-k3y", repeated.as_str()] {
            assert!(!weakness(secret, 32).unwrap().contains(secret));
        }
    }

    const SECRET: &str = "--jwt-secret=0123456789abcdef-cli-test-secret-9f8e7d";

    const AUDIT_KEY: &str = "--audit-key=cli-test-audit-key-5e4d3c2b1a09f8e7";

    /// Parses `coffer ARGS`, with an audit key after the (sub)command of each one that connects.
    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let roles = ["api", "dev", "chain-listener", "outbox-publisher", "reconciler"];
        let tools = ["user", "ledger", "audit"];
        let mut all = vec!["coffer"];
        for (index, arg) in args.iter().enumerate() {
            all.push(arg);
            let role = index == 0 && roles.contains(arg);
            if role || (index == 1 && tools.contains(&args[0])) {
                all.push(AUDIT_KEY);
            }
        }
        Cli::try_parse_from(all)
    }

    #[test]
    fn an_unknown_log_format_is_refused_and_names_the_choices() {
        let error = parse(&["--log-format", "pretty", "crdgen"])
            .err()
            .expect("refused");
        let text = error.to_string();
        assert!(
            text.contains("pretty") && text.contains("json") && text.contains("text"),
            "{text}"
        );
        let text_format = parse(&["--log-format", "text", "crdgen"]).unwrap();
        assert_eq!(text_format.log_format, Some(LogFormat::Text));
    }

    #[test]
    fn logs_are_text_on_a_terminal_and_json_elsewhere_unless_set() {
        use coffer_telemetry::LogFormat as Out;
        assert_eq!(LogFormat::resolve(None, true), Out::Text);
        assert_eq!(LogFormat::resolve(None, false), Out::Json);
        assert_eq!(LogFormat::resolve(Some(LogFormat::Json), true), Out::Json);
        assert_eq!(LogFormat::resolve(Some(LogFormat::Text), false), Out::Text);
    }

    #[test]
    fn numbers_out_of_range_are_refused_not_clamped() {
        let base = [
            "chain-listener",
            "--chain",
            "c",
            "--eth-rpc-url",
            "http://n",
            "--assets-file",
            "a",
        ];
        for (flag, value) in [
            ("--poll-interval-ms", "10"),
            ("--max-blocks-per-poll", "0"),
            ("--max-blocks-per-poll", "5000"),
        ] {
            let mut args = base.to_vec();
            args.extend([flag, value]);
            let error = parse(&args)
                .err()
                .unwrap_or_else(|| panic!("{flag} {value} accepted"));
            assert!(error.to_string().contains(value), "{error}");
        }
        let api = ["api", SECRET, "--assets-file", "a"];
        for (flag, value) in [
            ("--access-token-ttl-seconds", "30"),
            ("--rate-money-per-user-per-minute", "0"),
            ("--withdrawal-reauth-seconds", "10"),
            ("--device-trust-delay-seconds", "99999999"),
        ] {
            let mut args = api.to_vec();
            args.extend([flag, value]);
            assert!(parse(&args).is_err(), "{flag} {value} accepted");
        }
        let mut publisher = vec!["outbox-publisher"];
        publisher.extend(["--batch-size", "0"]);
        assert!(parse(&publisher).is_err());
    }

    #[test]
    fn api_and_dev_take_only_their_own_flags() {
        let api = ["api", SECRET, "--assets-file", "a"];
        assert!(parse(&api).is_ok());
        for dev_only in ["--eth-rpc-url=http://n", "--signer-key-file=/k"] {
            let mut args = api.to_vec();
            args.push(dev_only);
            assert!(parse(&args).is_err(), "coffer api takes {dev_only}");
        }
        let dev = parse(&["dev", SECRET, "--assets-file", "a", "--eth-rpc-url=http://n"]).unwrap();
        let Command::Dev(dev) = dev.command else {
            panic!("dev")
        };
        assert_eq!(dev.eth_rpc_url.as_deref(), Some("http://n"));
        assert_eq!(dev.api.listen, "127.0.0.1:8080");
    }

    #[test]
    fn an_unknown_user_role_is_refused() {
        let args = [
            "user",
            "create",
            "--email",
            "a@b.c",
            "--role",
            "root",
            "--password-stdin",
        ];
        assert!(parse(&args).is_err());
        let args = [
            "user",
            "create",
            "--email",
            "a@b.c",
            "--role",
            "finance",
            "--password-stdin",
        ];
        let Command::User {
            command: UserCommand::Create(create),
        } = parse(&args).unwrap().command
        else {
            panic!("user create")
        };
        assert_eq!(coffer_store::Role::from(create.role), coffer_store::Role::Finance);
    }
}
