//! Helpers for integration tests. Every test gets its own database on the real server named by
//! `MONGODB_URI` (scripts/test starts SecantusDB and sets it), and its own API on 127.0.0.1:0.

pub mod broker;
pub mod browser;
pub mod chain;
pub mod contract;
pub mod otlp;
pub mod process;
pub mod stream;
pub mod tls;

use std::net::SocketAddr;

use coffer_api::config::{ApiConfig, PasswordHashing, RateLimits};
use coffer_api::ApiContext;
use coffer_domain::{AssetCatalog, LiveCatalog};
use coffer_store::{Role, Store, StoreConfig, StoreMetrics};
use reqwest::StatusCode;
use serde_json::{json, Value};

pub const DEV_ASSETS: &str = include_str!("../../../config/assets.dev.json");

/// The MongoDB URI of the test server. Integration tests need the real server: run them
/// through `scripts/test`, which starts it.
pub fn mongodb_uri() -> String {
    std::env::var("MONGODB_URI").expect(
        "MONGODB_URI is not set: integration tests talk to a real MongoDB-compatible server; run scripts/test",
    )
}

/// The audit key of test apps and test processes (`COFFER_AUDIT_KEY`); tests only.
pub const TEST_AUDIT_KEY: &str = "test-audit-key-4f1c9a7e2b8d6053c1e9f7a2";

/// The audit keys of [`TEST_AUDIT_KEY`] (what a test app's store MACs records with).
pub fn test_audit_keys() -> coffer_store::audit::AuditKeys {
    let key = coffer_store::audit::AuditKey::new(TEST_AUDIT_KEY).expect("a valid test key");
    coffer_store::audit::AuditKeys::new(key, Vec::new())
}

/// The PII encryption key of test apps and test processes (`COFFER_PII_KEY`); tests only.
pub const TEST_PII_KEY: &str = "1eb94fee6b9a2aed9398d6379038109a054260f386eb5499b9d226c456fecb97";

/// The e-mail blind-index key of test apps and test processes (`COFFER_PII_INDEX_KEY`).
pub const TEST_PII_INDEX_KEY: &str = "df0b738a2203f1a1be06d77b755261ae8cc89b81d1dd5447418a570f5efff240";

/// The PII keys of [`TEST_PII_KEY`] and [`TEST_PII_INDEX_KEY`] (what a test app's store seals
/// users' personal data with).
pub fn test_pii_keys() -> coffer_store::pii::PiiKeys {
    coffer_store::pii::PiiKeys::local(TEST_PII_KEY, &[], TEST_PII_INDEX_KEY).expect("valid test keys")
}

/// The environment that gives a process the test PII keys.
pub fn test_pii_env() -> Vec<(String, String)> {
    vec![
        ("COFFER_PII_KEY".into(), TEST_PII_KEY.into()),
        ("COFFER_PII_INDEX_KEY".into(), TEST_PII_INDEX_KEY.into()),
    ]
}

/// Options of a test app.
#[derive(Clone)]
pub struct Options {
    pub rate_limits: RateLimits,
    pub store: StoreConfig,
    /// Limits of on-demand reconciliations (tests shorten the stuck limits).
    pub reconcile: coffer_store::reconcile::ReconcileConfig,
    /// The asset catalog (default: config/assets.dev.json).
    pub assets: Option<AssetCatalog>,
    /// The account xpub deposit addresses derive from (default: none configured).
    pub deposit_xpub: Option<String>,
    /// Webhook secrets by provider.
    pub webhook_secrets: Vec<(String, String)>,
    /// The node each chain's webhook reports are checked against.
    pub chain_rpcs: Vec<(String, coffer_chain::rpc::Rpc)>,
    /// A new device's cooling-off period (default 0: trusted at once).
    pub device_trust_delay: std::time::Duration,
    /// A saved withdrawal address's cooling-off period (default 0: usable at once).
    pub address_cooling_off: std::time::Duration,
    /// The platform's own addresses no user may save (lower-case).
    pub platform_addresses: Vec<String>,
    /// How recent a password login a withdrawal needs (default: the product's 10 minutes).
    pub withdrawal_reauth_window: Option<std::time::Duration>,
    /// The header the client IP is read from (default: none, the TCP peer).
    pub client_ip_header: Option<String>,
    /// Password hashing parameters (default: cheap ones, so the suite stays fast).
    pub password_hashing: Option<PasswordHashing>,
    /// A session's absolute lifetime (default: the product's 30 days).
    pub session_lifetime: Option<std::time::Duration>,
    /// How long a replica trusts its memory of an active session (default: the product's 2 s).
    pub session_check_interval: Option<std::time::Duration>,
    /// The database to use (default: a fresh one): two apps on one database are two API replicas.
    pub database: Option<String>,
    /// Routes served beside the API's, under the same layers (e.g. a handler that panics).
    pub extra_routes: Option<axum::Router<ApiContext>>,
    /// The key that signs liabilities statements (default: none, publishing is unconfigured).
    pub liability_signing_key: Option<coffer_api::liabilities::LiabilityKey>,
    /// The tier of users the KYC provider has not assessed (default: full, so tests that are not
    /// about verification move money as before; the product's default is unverified).
    pub kyc_default_tier: coffer_domain::policy::Tier,
}

impl Options {
    /// Default options whose store records every query's filter into `log` (for the tests that
    /// check query plans with `explain`).
    pub fn recording_queries(log: &coffer_store::inspect::QueryLog) -> Options {
        Options {
            store: StoreConfig {
                query_log: Some(log.clone()),
                ..StoreConfig::default()
            },
            ..Options::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            extra_routes: None,
            liability_signing_key: None,
            kyc_default_tier: coffer_domain::policy::Tier::Full,
            rate_limits: RateLimits {
                auth_per_ip_per_minute: 100_000,
                money_per_user_per_minute: 100_000,
                money_per_ip_per_minute: 100_000,
                reads_per_user_per_minute: 100_000,
                reads_per_ip_per_minute: 100_000,
                // Tests register many users at once; the product's bound is tested on its own.
                password_hashing_concurrent_max: 64,
                ..RateLimits::default()
            },
            store: StoreConfig::default(),
            reconcile: Default::default(),
            assets: None,
            deposit_xpub: None,
            webhook_secrets: Vec::new(),
            chain_rpcs: Vec::new(),
            device_trust_delay: std::time::Duration::ZERO,
            address_cooling_off: std::time::Duration::ZERO,
            platform_addresses: Vec::new(),
            withdrawal_reauth_window: None,
            session_lifetime: None,
            session_check_interval: None,
            client_ip_header: None,
            password_hashing: None,
            database: None,
        }
    }
}

pub struct TestApp {
    pub address: SocketAddr,
    pub store: Store,
    pub client: reqwest::Client,
    pub registry: prometheus::Registry,
    /// The hub of this app's `GET /v1/stream` connections (feed it with a stream consumer).
    pub stream_hub: coffer_events::StreamHub,
    /// The live catalog the app reads (replace it to change an asset at run time).
    pub catalog: LiveCatalog,
    /// Each user's trusted device (see [`TestApp::trusted_device`]).
    devices: std::sync::Mutex<std::collections::HashMap<String, TestDevice>>,
}

/// A device the test registered: its id and its private key (which, as on a phone, only the
/// client holds).
#[derive(Clone)]
pub struct TestDevice {
    pub id: String,
    pub key: ed25519_dalek::SigningKey,
}

impl TestDevice {
    /// A fresh Ed25519 key.
    pub fn new_key() -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>())
    }

    /// Standard base64 of `key`'s public half, as `POST /v1/devices` takes it.
    pub fn public_key_of(key: &ed25519_dalek::SigningKey) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes())
    }

    /// The device headers of a request signed now with a fresh nonce.
    pub fn sign(&self, method: &str, path: &str, body: &[u8]) -> Vec<(String, String)> {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        self.sign_at(method, path, body, chrono::Utc::now().timestamp(), &nonce)
    }

    /// The device headers of a request signed with `timestamp` and `nonce`.
    pub fn sign_at(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        timestamp: i64,
        nonce: &str,
    ) -> Vec<(String, String)> {
        use base64::Engine as _;
        use ed25519_dalek::Signer as _;
        let message = coffer_api::devices::signed_message(method, path, &self.id, timestamp, nonce, body);
        let signature = self.key.sign(&message);
        vec![
            ("X-Device-Id".into(), self.id.clone()),
            ("X-Device-Timestamp".into(), timestamp.to_string()),
            ("X-Device-Nonce".into(), nonce.to_string()),
            (
                "X-Device-Signature".into(),
                base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
            ),
        ]
    }
}

/// A registered user with a live session.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: String,
    pub email: String,
    pub password: String,
    pub access_token: String,
    pub refresh_token: String,
    /// A staff account's TOTP secret (base32), enrolled as `coffer user create` does.
    pub totp_secret: Option<String>,
}

/// A response: status, headers and JSON body (Null when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    /// The body as text (a CSV, or the JSON as sent).
    pub text: String,
}

impl Reply {
    /// The problem document's `code`, or "" if the body has none.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(mut options: Options) -> TestApp {
        options.store.audit_keys.get_or_insert_with(test_audit_keys);
        options.store.pii.get_or_insert_with(test_pii_keys);
        let registry = prometheus::Registry::new();
        let database = options
            .database
            .clone()
            .unwrap_or_else(|| format!("t_{}", uuid::Uuid::new_v4().simple()));
        let metrics = StoreMetrics::new(&registry).expect("metrics");
        let store = Store::connect(&mongodb_uri(), &database, options.store.clone(), metrics)
            .await
            .expect("connect to the test server");
        store.ensure_indexes().await.expect("indexes");
        let catalog = options
            .assets
            .clone()
            .unwrap_or_else(|| AssetCatalog::from_json(DEV_ASSETS).expect("dev assets"));
        for asset in catalog.iter() {
            store
                .ensure_platform_accounts(&asset.symbol, asset.decimals)
                .await
                .expect("platform accounts");
        }
        let mut config = ApiConfig::new(secrecy::SecretString::from(
            "test-secret-test-secret-test-secret-0123",
        ));
        config.rate_limits = options.rate_limits;
        config.reconcile = options.reconcile;
        // Real argon2id, with cheap parameters so the suite stays fast.
        config.password_hashing = options.password_hashing.clone().unwrap_or(PasswordHashing {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        });
        config.client_ip_header = options.client_ip_header.clone();
        config.deposit_keys = options
            .deposit_xpub
            .as_deref()
            .map(|xpub| coffer_chain::hd::DepositKeys::from_xpub(xpub).expect("xpub"));
        config.device_trust_delay = options.device_trust_delay;
        config.address_cooling_off = options.address_cooling_off;
        config.platform_addresses = options.platform_addresses.clone();
        if let Some(window) = options.withdrawal_reauth_window {
            config.withdrawal_reauth_window = window;
        }
        if let Some(lifetime) = options.session_lifetime {
            config.session_lifetime = lifetime;
        }
        if let Some(interval) = options.session_check_interval {
            config.session_check_interval = interval;
        }
        // Test apps serve plain HTTP on 127.0.0.1: the console cookie cannot be `Secure` there.
        config.console_cookie_secure = false;
        for (provider, secret) in &options.webhook_secrets {
            config
                .webhook_secrets
                .insert(provider.clone(), secrecy::SecretString::from(secret.clone()));
        }
        config.chain_rpcs = options.chain_rpcs.iter().cloned().collect();
        config.liability_signing_key = options.liability_signing_key.clone();
        config.kyc_default_tier = options.kyc_default_tier;
        let live = LiveCatalog::new(catalog);
        let ctx = ApiContext::new(store.clone(), config, live.clone(), registry.clone()).expect("context");
        let stream_hub = ctx.stream_hub().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let extra = options.extra_routes.clone().unwrap_or_default();
        tokio::spawn(coffer_api::serve_with(
            ctx,
            extra,
            listener,
            std::future::pending(),
        ));
        let client = reqwest::Client::builder().no_proxy().build().expect("client");
        TestApp {
            address,
            store,
            client,
            registry,
            stream_hub,
            catalog: live,
            devices: Default::default(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    /// Sends a request; `body` None sends no body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        idempotency_key: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        self.send_with(method, path, token, idempotency_key, body, &[])
            .await
    }

    /// [`TestApp::send`] with extra headers.
    pub async fn send_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        idempotency_key: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let method_name = method;
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        contract::assert_conforms(&contract::Received {
            method: method_name,
            path,
            status: status.as_u16(),
            headers: &headers,
            body: &bytes,
        });
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send("GET", path, Some(token), None, None).await
    }

    /// POST with a fresh Idempotency-Key.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        let key = uuid::Uuid::new_v4().to_string();
        self.send("POST", path, Some(token), Some(&key), Some(&body))
            .await
    }

    /// Registers a device of `user` with a fresh key; answers it and the API's view of it.
    pub async fn register_device(&self, user: &TestUser, name: &str) -> (TestDevice, Value) {
        let key = TestDevice::new_key();
        let body = json!({ "name": name, "public_key": TestDevice::public_key_of(&key) });
        let reply = self.post("/v1/devices", &user.access_token, body).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "register device: {:?}",
            reply.body
        );
        let id = reply.body["id"].as_str().expect("device id").to_string();
        (TestDevice { id, key }, reply.body)
    }

    /// A device of `user` registered through the API (trusted at once with the default
    /// options), the same one on every call.
    pub async fn trusted_test_device(&self, user: &TestUser) -> TestDevice {
        if let Some(device) = self.devices.lock().unwrap().get(&user.id) {
            return device.clone();
        }
        let (device, _) = self.register_device(user, "test phone").await;
        self.devices
            .lock()
            .unwrap()
            .insert(user.id.clone(), device.clone());
        device
    }

    /// The id of [`TestApp::trusted_test_device`].
    pub async fn trusted_device(&self, user: &TestUser) -> String {
        self.trusted_test_device(user).await.id
    }

    /// `POST /v1/withdrawals` signed by the user's trusted device, with a fresh Idempotency-Key.
    pub async fn withdraw(&self, user: &TestUser, body: Value) -> Reply {
        let device = self.trusted_test_device(user).await;
        self.withdraw_signed(user, &device, &body).await
    }

    /// Saves `address` in the user's address book on the chain of `wallet_id`'s asset; answers
    /// the reply (`address_already_saved` when it is saved already).
    pub async fn save_address_for(&self, user: &TestUser, wallet_id: &str, address: &str) -> Reply {
        let asset = self.wallet(user, wallet_id).await["asset"]
            .as_str()
            .expect("asset")
            .to_string();
        let chain = self.catalog.current().get(&asset).expect("asset").chain.clone();
        let body = json!({ "chain": chain, "address": address, "label": "test destination" });
        // Not asserted: a test of a refused destination sends one the book refuses too.
        self.post("/v1/address-book", &user.access_token, body).await
    }

    /// `POST /v1/withdrawals` signed by `device`, with a fresh Idempotency-Key; the destination
    /// is saved in the address book first.
    pub async fn withdraw_signed(&self, user: &TestUser, device: &TestDevice, body: &Value) -> Reply {
        let (wallet, destination) = (body["wallet_id"].as_str(), body["destination_address"].as_str());
        if let (Some(wallet), Some(destination)) = (wallet, destination) {
            // Only into the caller's own wallet's book (a test may name another user's wallet).
            let path = format!("/v1/wallets/{wallet}");
            if self.get(&path, &user.access_token).await.status == StatusCode::OK {
                self.save_address_for(user, wallet, destination).await;
            }
        }
        let key = uuid::Uuid::new_v4().to_string();
        self.send_signed("POST", "/v1/withdrawals", user, &key, Some(body), device)
            .await
    }

    /// A request signed by `device` (method, path, body as sent) with `Idempotency-Key` `key`.
    pub async fn send_signed(
        &self,
        method: &str,
        path: &str,
        user: &TestUser,
        key: &str,
        body: Option<&Value>,
        device: &TestDevice,
    ) -> Reply {
        let bytes = body
            .map(|b| serde_json::to_vec(b).expect("json"))
            .unwrap_or_default();
        let signed = device.sign(method, path, &bytes);
        let headers: Vec<(&str, &str)> = signed.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        self.send_with(method, path, Some(&user.access_token), Some(key), body, &headers)
            .await
    }

    /// `POST /v1/withdrawals` naming `device` in `X-Device-Id` (or no device) and signed by
    /// nothing, with a fresh Idempotency-Key: what a caller who knows a device's id but not its key
    /// can send.
    pub async fn withdraw_from(&self, user: &TestUser, device: Option<&str>, body: &Value) -> Reply {
        let key = uuid::Uuid::new_v4().to_string();
        let headers: Vec<(&str, &str)> = device.map(|d| ("X-Device-Id", d)).into_iter().collect();
        self.send_with(
            "POST",
            "/v1/withdrawals",
            Some(&user.access_token),
            Some(&key),
            Some(body),
            &headers,
        )
        .await
    }

    /// `POST /v1/auth/register` with `email` and `password`, whatever it answers.
    pub async fn register_as(&self, email: &str, password: &str) -> Reply {
        let body = json!({ "email": email, "password": password });
        self.send("POST", "/v1/auth/register", None, None, Some(&body))
            .await
    }

    pub async fn register(&self) -> TestUser {
        let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let reply = self.register_as(&email, &password).await;
        assert_eq!(reply.status, StatusCode::CREATED, "register: {:?}", reply.body);
        user_from(&reply, email, password)
    }

    /// A user with `role`, created directly in the store (as `coffer user create` does, with a
    /// TOTP secret for the staff roles), logged in (with the current code when it has a secret).
    pub async fn staff(&self, role: Role) -> TestUser {
        let email = format!("{}-{}@coffer.test", role.as_str(), uuid::Uuid::new_v4().simple());
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let user = self.create_account(&email, &password, role).await;
        if !coffer_api::mfa::required_for(role) {
            return self.login(&email, &password).await;
        }
        let secret = coffer_api::mfa::new_secret();
        use secrecy::ExposeSecret;
        self.store
            .set_totp_secret(&user.id, secret.expose_secret())
            .await
            .expect("enroll TOTP");
        let code = totp_now(&secret);
        let body = json!({ "email": email, "password": password, "totp_code": code });
        let reply = self.send("POST", "/v1/auth/login", None, None, Some(&body)).await;
        assert_eq!(reply.status, StatusCode::OK, "staff login: {:?}", reply.body);
        let mut staff = user_from(&reply, email, password);
        staff.totp_secret = Some(secret.expose_secret().to_string());
        staff
    }

    /// A staff account with `role` and an enrolled TOTP secret, created in the store and not
    /// logged in: the current code is still unused, for a console sign-in.
    pub async fn staff_account(&self, role: Role) -> StaffAccount {
        let email = format!("{}-{}@coffer.test", role.as_str(), uuid::Uuid::new_v4().simple());
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let user = self.create_account(&email, &password, role).await;
        let secret = coffer_api::mfa::new_secret();
        use secrecy::ExposeSecret;
        self.store
            .set_totp_secret(&user.id, secret.expose_secret())
            .await
            .expect("enroll TOTP");
        StaffAccount {
            id: user.id,
            email,
            password,
            totp_secret: secret,
        }
    }

    /// An account created directly in the store (as `coffer user create` does, audited), with
    /// cheap password hashing; not logged in.
    pub async fn create_account(&self, email: &str, password: &str, role: Role) -> coffer_store::UserDoc {
        let cheap = PasswordHashing {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        let hash = coffer_api::auth::hash_password(secrecy::SecretString::from(password.to_string()), cheap)
            .await
            .expect("hash");
        let audit = coffer_store::audit::Audit::new("cli", coffer_store::audit_chain::actions::STAFF_CREATED);
        self.store
            .create_user(email, hash, role, audit)
            .await
            .expect("create account")
    }

    pub async fn login(&self, email: &str, password: &str) -> TestUser {
        let reply = self
            .send(
                "POST",
                "/v1/auth/login",
                None,
                None,
                Some(&json!({ "email": email, "password": password })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "login: {:?}", reply.body);
        user_from(&reply, email.to_string(), password.to_string())
    }

    pub async fn create_wallet(&self, user: &TestUser, asset: &str) -> String {
        let reply = self
            .post("/v1/wallets", &user.access_token, json!({ "asset": asset }))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "create wallet: {:?}",
            reply.body
        );
        reply.body["id"].as_str().expect("wallet id").to_string()
    }

    /// Credits `amount` to a wallet through the payment service role.
    pub async fn deposit(&self, payment: &TestUser, wallet_id: &str, amount: &str) -> Reply {
        let reference = format!("ref-{}", uuid::Uuid::new_v4().simple());
        let body = json!({ "wallet_id": wallet_id, "amount": amount, "external_reference": reference });
        let reply = self.post("/v1/deposits", &payment.access_token, body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "deposit: {:?}", reply.body);
        reply
    }

    pub async fn wallet(&self, user: &TestUser, wallet_id: &str) -> Value {
        let reply = self
            .get(&format!("/v1/wallets/{wallet_id}"), &user.access_token)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "wallet: {:?}", reply.body);
        reply.body
    }

    /// Fails the test unless every cached balance equals its ledger sum and every transaction and
    /// asset sums to zero.
    pub async fn assert_books_balance(&self) {
        let report = self.store.verify_ledger().await.expect("verify");
        assert!(
            report.findings.is_empty(),
            "the books do not balance: {:#?}",
            report.findings
        );
        assert!(report.accounts_checked > 0);
    }

    /// Counts documents in a collection.
    pub async fn count(&self, collection: &str) -> u64 {
        self.store
            .database()
            .collection::<coffer_store::mongodb::bson::Document>(collection)
            .count_documents(coffer_store::mongodb::bson::doc! {})
            .await
            .expect("count")
    }

    /// Counts documents of a collection that match `filter`.
    pub async fn count_where(&self, collection: &str, filter: coffer_store::mongodb::bson::Document) -> u64 {
        self.store
            .database()
            .collection::<coffer_store::mongodb::bson::Document>(collection)
            .count_documents(filter)
            .await
            .expect("count")
    }

    /// The value of a counter or gauge in this app's registry (0 if absent), summed over labels.
    pub fn metric(&self, name: &str) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric().iter())
            .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
            .sum()
    }
}

/// A staff account that has not logged in yet (see [`TestApp::staff_account`]).
pub struct StaffAccount {
    pub id: String,
    pub email: String,
    pub password: String,
    pub totp_secret: secrecy::SecretString,
}

impl StaffAccount {
    /// The code of the current step (each step's code works once).
    pub fn code(&self) -> String {
        totp_now(&self.totp_secret)
    }

    /// The code of the next step (accepted within one step of the server's clock): a second
    /// sign-in within the same 30 seconds.
    pub fn next_code(&self) -> String {
        let next = chrono::Utc::now().timestamp() as u64 + coffer_api::mfa::STEP_SECONDS;
        coffer_api::mfa::code_at(&self.totp_secret, next).expect("a valid TOTP secret")
    }
}

/// The current TOTP code of `secret`.
pub fn totp_now(secret: &secrecy::SecretString) -> String {
    let now = chrono::Utc::now().timestamp() as u64;
    coffer_api::mfa::code_at(secret, now).expect("a valid TOTP secret")
}

fn user_from(reply: &Reply, email: String, password: String) -> TestUser {
    TestUser {
        id: reply.body["user_id"].as_str().expect("user_id").to_string(),
        email,
        password,
        access_token: reply.body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string(),
        refresh_token: reply.body["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_string(),
        totp_secret: None,
    }
}
