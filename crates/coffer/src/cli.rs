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
    /// Relay the outbox to RabbitMQ (not built yet).
    OutboxPublisher,
    /// Prove the books on an interval (not built yet).
    Reconciler,
    /// Run the Kubernetes operator.
    Operator(coffer_operator::OperatorArgs),
    /// Print the CustomResourceDefinitions (`coffer crdgen > crds/coffer.yaml`).
    Crdgen,
    /// Ledger tools.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
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
            Command::OutboxPublisher => "outbox-publisher",
            Command::Reconciler => "reconciler",
            Command::Operator(_) => "operator",
            Command::Crdgen => "crdgen",
            Command::Ledger { .. } => "ledger",
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
}

#[derive(Args)]
pub struct ApiArgs {
    #[command(flatten)]
    pub db: DbArgs,
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
    /// The BIP44 account xpub (m/44'/60'/0') deposit addresses derive from; public key only.
    #[arg(long, env = "COFFER_DEPOSIT_XPUB", hide_env_values = true)]
    pub deposit_xpub: Option<String>,
    /// `coffer dev` runs the chain listener when this node answers.
    #[arg(long, env = "ETH_RPC_URL", hide_env_values = true)]
    pub eth_rpc_url: Option<String>,
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
        if let Some(xpub) = &self.deposit_xpub {
            let keys = coffer_chain::hd::DepositKeys::from_xpub(xpub).map_err(|e| anyhow::anyhow!("{e}"))?;
            config.deposit_keys = Some(keys);
        }
        config.webhook_secrets = webhook_secrets();
        for (provider, secret) in &config.webhook_secrets {
            if secret.expose_secret().len() < 16 {
                bail!("the webhook secret of {provider} must be at least 16 bytes");
            }
        }
        Ok(config)
    }
}
