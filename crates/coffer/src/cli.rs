//! Command line and environment: one typed struct per role, validated at start.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
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
    /// Log format: json (default, for machines) or text.
    #[arg(long, env = "COFFER_LOG_FORMAT", default_value = "json", global = true)]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Api(ApiArgs),
    /// Run every built role in one process (local development).
    Dev(ApiArgs),
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
            Command::Ledger { .. } => "ledger",
            Command::Audit { .. } => "audit",
            Command::User { .. } => "user",
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
    /// Walk the audit log's hash chain; exit 1 and name the record where it breaks.
    Verify(DbArgs),
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a staff account or service credential (password on stdin).
    Create(UserCreateArgs),
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
    #[arg(long, env = "COFFER_OUTBOX_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: u32,
    /// Failed attempts before a row is dead-lettered (1..=100).
    #[arg(long, env = "COFFER_OUTBOX_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: i32,
    /// Seconds a claim holds (10..=600); a crashed replica's rows are re-published after it.
    #[arg(long, env = "COFFER_OUTBOX_LEASE_SECONDS", default_value_t = 30)]
    pub lease_seconds: u64,
}

impl PublisherArgs {
    /// The relay configuration, validated; `owner` names this replica.
    pub fn relay_config(&self, owner: &str) -> anyhow::Result<coffer_events::RelayConfig> {
        if !(1..=1000).contains(&self.batch_size) {
            bail!("COFFER_OUTBOX_BATCH_SIZE must be between 1 and 1000");
        }
        if !(1..=100).contains(&self.max_attempts) {
            bail!("COFFER_OUTBOX_MAX_ATTEMPTS must be between 1 and 100");
        }
        if !(10..=600).contains(&self.lease_seconds) {
            bail!("COFFER_OUTBOX_LEASE_SECONDS must be between 10 and 600");
        }
        let mut config = coffer_events::RelayConfig::new(&self.amqp.events_exchange, owner);
        config.batch_size = self.batch_size;
        config.max_attempts = self.max_attempts;
        config.lease = Duration::from_secs(self.lease_seconds);
        Ok(config)
    }
}

#[derive(Args)]
pub struct UserCreateArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[arg(long)]
    pub email: String,
    /// user, support, finance, engineering, admin or payment.
    #[arg(long)]
    pub role: String,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Args)]
pub struct ChainListenerArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The chain name, as assets declare it (e.g. ethereum-dev).
    #[arg(long)]
    pub chain: String,
    /// The node's JSON-RPC endpoint (http://).
    #[arg(long, env = "ETH_RPC_URL", hide_env_values = true)]
    pub eth_rpc_url: String,
    #[arg(long, env = "COFFER_POLL_INTERVAL_MS", default_value_t = 2000)]
    pub poll_interval_ms: u64,
    /// First block to scan when there is no checkpoint (default: the node's head).
    #[arg(long, env = "COFFER_START_BLOCK")]
    pub start_block: Option<u64>,
    #[arg(long, env = "COFFER_MAX_BLOCKS_PER_POLL", default_value_t = 50)]
    pub max_blocks_per_poll: u64,
    #[arg(long, env = "COFFER_ASSETS_FILE")]
    pub assets_file: std::path::PathBuf,
    /// /healthz, /readyz and /metrics.
    #[arg(long, env = "COFFER_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: String,
    /// The hot wallet's private key file (hex; a mounted Secret). When set, this process also
    /// runs the withdrawal broadcaster of the chain. Development signer: production plugs a KMS
    /// or HSM behind the same `Signer` interface.
    #[arg(long, env = "COFFER_SIGNER_KEY_FILE")]
    pub signer_key_file: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct ApiArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[arg(long, env = "COFFER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// HMAC key of access tokens (at least 32 bytes). No default: there are no default secrets.
    #[arg(long, env = "COFFER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: SecretString,
    /// The asset catalog (AssetsFile v1 JSON); re-read when it changes.
    #[arg(long, env = "COFFER_ASSETS_FILE")]
    pub assets_file: std::path::PathBuf,
    #[arg(long, env = "COFFER_ACCESS_TOKEN_TTL_SECONDS", default_value_t = 900)]
    pub access_token_ttl_seconds: u64,
    #[arg(long, env = "COFFER_REFRESH_TOKEN_TTL_SECONDS", default_value_t = 30 * 24 * 3600)]
    pub refresh_token_ttl_seconds: u64,
    #[arg(long, env = "COFFER_RATE_AUTH_PER_IP_PER_MINUTE", default_value_t = 30)]
    pub rate_auth_per_ip_per_minute: u32,
    #[arg(long, env = "COFFER_RATE_MONEY_PER_USER_PER_MINUTE", default_value_t = 120)]
    pub rate_money_per_user_per_minute: u32,
    #[arg(long, env = "COFFER_RATE_MONEY_PER_IP_PER_MINUTE", default_value_t = 600)]
    pub rate_money_per_ip_per_minute: u32,
    /// Trust this header (e.g. x-forwarded-for) for the client IP; only behind a proxy you run.
    #[arg(long, env = "COFFER_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,
    #[command(flatten)]
    pub reconcile: ReconcileArgs,
    /// The BIP44 account xpub (m/44'/60'/0') deposit addresses derive from; public key only.
    #[arg(long, env = "COFFER_DEPOSIT_XPUB", hide_env_values = true)]
    pub deposit_xpub: Option<String>,
    /// `coffer dev` runs the chain listener when this node answers.
    #[arg(long, env = "ETH_RPC_URL", hide_env_values = true)]
    pub eth_rpc_url: Option<String>,
    /// `coffer dev` also runs the withdrawal broadcaster with this hot-wallet key file.
    #[arg(long, env = "COFFER_SIGNER_KEY_FILE")]
    pub signer_key_file: Option<std::path::PathBuf>,
    /// Seconds a newly registered device waits before it is trusted (0 to 30 days).
    #[arg(long, env = "COFFER_DEVICE_TRUST_DELAY_SECONDS", default_value_t = 24 * 3600)]
    pub device_trust_delay_seconds: u64,
    /// A withdrawal needs a password login at most this many seconds ago (60 to 86400).
    #[arg(long, env = "COFFER_WITHDRAWAL_REAUTH_SECONDS", default_value_t = 600)]
    pub withdrawal_reauth_seconds: u64,
}

/// Limits of reconciliation runs (the reconciler role and on-demand runs through the API).
#[derive(Args, Clone)]
pub struct ReconcileArgs {
    /// Override how long a transaction may stay in a state, e.g. `pending_broadcast=900,confirming=7200`.
    /// Defaults: created 900, pending_broadcast 900, broadcasted 3600, confirming 7200,
    /// retryable 3600, manual_review 259200 seconds.
    #[arg(long, env = "COFFER_RECONCILE_STUCK_LIMITS")]
    pub reconcile_stuck_limits: Option<String>,
    /// How old (seconds) the oldest unpublished outbox event may be.
    #[arg(long, env = "COFFER_RECONCILE_OUTBOX_LIMIT_SECONDS", default_value_t = 300)]
    pub reconcile_outbox_limit_seconds: u64,
}

impl ReconcileArgs {
    pub fn config(&self) -> anyhow::Result<coffer_store::reconcile::ReconcileConfig> {
        let mut config = coffer_store::reconcile::ReconcileConfig::default();
        if let Some(text) = &self.reconcile_stuck_limits {
            config = config
                .with_state_limits(text)
                .map_err(|e| anyhow::anyhow!("COFFER_RECONCILE_STUCK_LIMITS: {e}"))?;
        }
        if !(1..=7 * 24 * 3600).contains(&self.reconcile_outbox_limit_seconds) {
            bail!("COFFER_RECONCILE_OUTBOX_LIMIT_SECONDS must be between 1 and 604800");
        }
        config.outbox_limit = Duration::from_secs(self.reconcile_outbox_limit_seconds);
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
    #[arg(long, env = "COFFER_RECONCILE_INTERVAL_SECONDS", default_value_t = 300)]
    pub interval_seconds: u64,
    #[command(flatten)]
    pub limits: ReconcileArgs,
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

impl ApiArgs {
    pub fn api_config(&self) -> anyhow::Result<ApiConfig> {
        if self.jwt_secret.expose_secret().len() < 32 {
            bail!("COFFER_JWT_SECRET must be at least 32 bytes");
        }
        if !(60..=3600).contains(&self.access_token_ttl_seconds) {
            bail!("COFFER_ACCESS_TOKEN_TTL_SECONDS must be between 60 and 3600");
        }
        let mut config = ApiConfig::new(self.jwt_secret.clone());
        config.access_token_ttl = Duration::from_secs(self.access_token_ttl_seconds);
        config.refresh_token_ttl = Duration::from_secs(self.refresh_token_ttl_seconds);
        config.rate_limits = RateLimits {
            auth_per_ip_per_minute: self.rate_auth_per_ip_per_minute,
            money_per_user_per_minute: self.rate_money_per_user_per_minute,
            money_per_ip_per_minute: self.rate_money_per_ip_per_minute,
        };
        config.client_ip_header = self.client_ip_header.as_ref().map(|h| h.to_ascii_lowercase());
        config.reconcile = self.reconcile.config()?;
        if let Some(xpub) = &self.deposit_xpub {
            let keys = coffer_chain::hd::DepositKeys::from_xpub(xpub).map_err(|e| anyhow::anyhow!("{e}"))?;
            config.deposit_keys = Some(keys);
        }
        if self.device_trust_delay_seconds > 30 * 24 * 3600 {
            bail!("COFFER_DEVICE_TRUST_DELAY_SECONDS must be at most 2592000 (30 days)");
        }
        config.device_trust_delay = Duration::from_secs(self.device_trust_delay_seconds);
        if !(60..=86_400).contains(&self.withdrawal_reauth_seconds) {
            bail!("COFFER_WITHDRAWAL_REAUTH_SECONDS must be between 60 and 86400");
        }
        config.withdrawal_reauth_window = Duration::from_secs(self.withdrawal_reauth_seconds);
        config.webhook_secrets = webhook_secrets();
        for (provider, secret) in &config.webhook_secrets {
            if secret.expose_secret().len() < 16 {
                bail!("the webhook secret of {provider} must be at least 16 bytes");
            }
        }
        Ok(config)
    }
}
