//! The API role's configuration, validated once at start.

use std::time::Duration;

use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct RateLimits {
    /// Requests to /v1/auth/* per client IP per minute.
    pub auth_per_ip_per_minute: u32,
    /// Money-moving requests per user per minute.
    pub money_per_user_per_minute: u32,
    /// Money-moving requests per client IP per minute.
    pub money_per_ip_per_minute: u32,
    /// Read requests (and stream upgrades) per user per minute.
    pub reads_per_user_per_minute: u32,
    /// Read requests (and stream upgrades) per client IP per minute.
    pub reads_per_ip_per_minute: u32,
    /// Failed logins per account and client network before that pair waits out the window.
    pub login_failures_max: u32,
    /// The window of `login_failures_max`.
    pub login_failure_window: Duration,
    /// Password hashes (register, login, password change) computed at once; beyond: 503.
    pub password_hashing_concurrent_max: usize,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            auth_per_ip_per_minute: 30,
            money_per_user_per_minute: 120,
            money_per_ip_per_minute: 600,
            reads_per_user_per_minute: 600,
            reads_per_ip_per_minute: 1200,
            login_failures_max: 5,
            login_failure_window: Duration::from_secs(15 * 60),
            password_hashing_concurrent_max: 4,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PasswordHashing {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for PasswordHashing {
    /// OWASP's argon2id recommendation: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        PasswordHashing {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// HMAC key of access tokens; at least 32 bytes.
    pub jwt_secret: SecretString,
    pub access_token_ttl: Duration,
    /// Idle lifetime of a refresh token (each refresh issues a new one).
    pub refresh_token_ttl: Duration,
    /// Absolute lifetime of a session: no refresh extends it (`COFFER_SESSION_LIFETIME_SECONDS`,
    /// default 30 days); then the user logs in again.
    pub session_lifetime: Duration,
    /// How long a replica may answer "this session is active" from memory
    /// (`COFFER_SESSION_CHECK_SECONDS`, default 2 s): the longest a revoked session keeps working.
    pub session_check_interval: Duration,
    /// Absolute lifetime of a support-console session (`COFFER_CONSOLE_SESSION_SECONDS`,
    /// default 8 hours): then the staff member signs in again.
    pub console_session_lifetime: Duration,
    /// Whether the console's cookie is `Secure` (default). Off only for local development over
    /// plain HTTP (`COFFER_CONSOLE_INSECURE_COOKIE=true`).
    pub console_cookie_secure: bool,
    pub body_limit_bytes: usize,
    pub rate_limits: RateLimits,
    /// The header carrying the client IP when behind a trusted proxy (e.g. `x-forwarded-for`).
    /// `None` (the default) uses the TCP peer address: headers are not trusted unless configured.
    pub client_ip_header: Option<String>,
    /// Networks of the proxies in front of the API (`COFFER_TRUSTED_PROXIES`): hops of the
    /// client IP header inside them are skipped. Empty: the TCP peer is the one trusted proxy.
    pub trusted_proxies: Vec<crate::limits::Cidr>,
    pub password_hashing: PasswordHashing,
    /// Limits of on-demand reconciliation runs (`POST /v1/admin/reconciliations`).
    pub reconcile: coffer_store::reconcile::ReconcileConfig,
    /// Derives deposit addresses from the configured extended public key (`COFFER_DEPOSIT_XPUB`).
    pub deposit_keys: Option<coffer_chain::hd::DepositKeys>,
    /// Webhook HMAC secrets by provider name (`COFFER_WEBHOOK_SECRET_<PROVIDER>`).
    pub webhook_secrets: std::collections::BTreeMap<String, SecretString>,
    /// The node each chain's webhook reports are checked against before anything is recorded
    /// (`COFFER_CHAIN_RPC_URLS`, `chain=url,…`); a chain without one records no webhook report.
    pub chain_rpcs: std::collections::BTreeMap<String, coffer_chain::rpc::Rpc>,
    /// How long a newly registered device waits before it is trusted (unless a trusted device
    /// vouches for it). `COFFER_DEVICE_TRUST_DELAY_SECONDS`, default 24 h.
    pub device_trust_delay: Duration,
    /// How far a device signature's timestamp may be from the server's clock, either way; its
    /// nonce is remembered at least this long past it. `COFFER_DEVICE_SIGNATURE_MAX_AGE_SECONDS`,
    /// default 5 minutes.
    pub device_signature_max_age: Duration,
    /// How long a saved withdrawal address waits before withdrawals may go to it.
    /// `COFFER_ADDRESS_COOLING_OFF_SECONDS`, default 24 h.
    pub address_cooling_off: Duration,
    /// The platform's own addresses (hot wallets), lower-case, that no user may save
    /// (`COFFER_PLATFORM_ADDRESSES`, comma-separated).
    pub platform_addresses: Vec<String>,
    /// A withdrawal needs a password login at most this long ago (refreshes keep the login
    /// time). `COFFER_WITHDRAWAL_REAUTH_SECONDS`, default 10 minutes.
    pub withdrawal_reauth_window: Duration,
    /// Serve `/metrics` on the API's own port (default). Off when the process serves it on a
    /// separate operations port (`COFFER_METRICS_LISTEN`), so the public port never exposes it.
    pub metrics_on_api_port: bool,
    /// Signs proof-of-liabilities statements (`COFFER_LIABILITY_SIGNING_KEY`); unset: publishing
    /// answers `422 liabilities_unconfigured`.
    pub liability_signing_key: Option<crate::liabilities::LiabilityKey>,
    /// The verification tier of a user the KYC provider has not assessed yet
    /// (`COFFER_KYC_DEFAULT_TIER`, default `unverified`: nothing leaves before verification).
    pub kyc_default_tier: coffer_domain::policy::Tier,
    /// How daily limits scale with the tier (`COFFER_KYC_BASIC_LIMIT_PERCENT`, default 10).
    pub tier_limits: coffer_domain::policy::TierLimits,
    /// Conversions: the rate source (`COFFER_FX_RATES`, `COFFER_FX_SPREAD_BPS`) and the quote
    /// lifetime (`COFFER_QUOTE_TTL_SECONDS`). Default: the dev table, 50 bps, 30 s.
    pub fx: crate::conversions::FxConfig,
}

impl ApiConfig {
    pub fn new(jwt_secret: SecretString) -> Self {
        ApiConfig {
            jwt_secret,
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 60 * 60),
            session_lifetime: Duration::from_secs(30 * 24 * 60 * 60),
            session_check_interval: Duration::from_secs(2),
            console_session_lifetime: Duration::from_secs(8 * 60 * 60),
            console_cookie_secure: true,
            body_limit_bytes: 64 * 1024,
            rate_limits: RateLimits::default(),
            client_ip_header: None,
            trusted_proxies: Vec::new(),
            password_hashing: PasswordHashing::default(),
            reconcile: Default::default(),
            deposit_keys: None,
            webhook_secrets: Default::default(),
            chain_rpcs: Default::default(),
            device_trust_delay: Duration::from_secs(24 * 60 * 60),
            device_signature_max_age: Duration::from_secs(5 * 60),
            address_cooling_off: Duration::from_secs(24 * 60 * 60),
            platform_addresses: Vec::new(),
            withdrawal_reauth_window: Duration::from_secs(10 * 60),
            metrics_on_api_port: true,
            liability_signing_key: None,
            kyc_default_tier: coffer_domain::policy::Tier::Unverified,
            tier_limits: Default::default(),
            fx: Default::default(),
        }
    }
}
