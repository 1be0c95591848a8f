//! Issue 8 (logs) and S6: every role runs as the real binary, at TRACE, through a flow that handles
//! every kind of secret — register, login, refresh, a signed webhook, a withdrawal signed with a
//! key file, a payment-service deposit, a publish, a reconciliation — and no secret or personal
//! value appears anywhere in any role's captured logs: passwords, tokens, the JWT, audit and PII
//! keys, e-mails, and the node URL with the provider key in its path. Each log line is JSON with the fields an
//! SRE filters on.
//!
//! Needs what scripts/test starts: MongoDB (`MONGODB_URI`), RabbitMQ (`AMQP_URI`, default local)
//! and anvil (installed under `.tools`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use coffer_chain::hd::account_xpub_of_mnemonic;
use coffer_chain::signer::{LocalSigner, Signer};
use coffer_test_support::chain::{Anvil, DEPOSIT_MNEMONIC};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

const ROLES: [&str; 5] = ["api", "outbox-publisher", "chain-listener", "reconciler", "user"];

struct Role {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Environment shared by every role of this test.
struct Stack {
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Stack {
    fn command(&self, role: &str, args: &[&str]) -> (Command, PathBuf) {
        let log = self.dir.join(format!("{role}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_coffer"));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "trace")
            .env("COFFER_LOG_FORMAT", "json")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        (command, log)
    }

    fn spawn(&self, name: &'static str, args: &[&str], extra: &[(&str, String)]) -> Role {
        let (mut command, log) = self.command(name, args);
        command.envs(extra.iter().map(|(k, v)| (*k, v.as_str())));
        command.stdin(Stdio::null());
        Role {
            name,
            child: command.spawn().expect("start coffer"),
            log,
        }
    }
}

fn hex_u64(value: &Value) -> u64 {
    u64::from_str_radix(value.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 30 s");
}

async fn metric(client: &reqwest::Client, port: u16, name: &str) -> f64 {
    let Ok(response) = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
    else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn write(path: &Path, text: &str) {
    File::create(path).unwrap().write_all(text.as_bytes()).unwrap();
}

#[tokio::test]
async fn no_role_logs_a_secret_or_personal_data_at_trace() {
    let canary = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!("coffer-role-logs-{canary}"));
    std::fs::create_dir_all(&dir).unwrap();
    let anvil = Anvil::start().await;

    // Secrets and personal data, each recognisable.
    let email = format!("pii-{canary}@example.com");
    let password = format!("password-{canary}");
    let payment_password = format!("payment-pw-{canary}");
    let admin_password = format!("admin-pw-{canary}");
    let jwt_secret = format!("jwt-secret-{canary}-0123456789");
    let audit_key = format!("audit-key-{canary}-0123456789");
    let webhook_secret = format!("webhook-secret-{canary}");
    // The node's URL carries a provider key in its path, as hosted providers' URLs do.
    let rpc_key = format!("rpc-key-{canary}");
    let rpc = coffer_test_support::chain::KeyedRpc::start(&anvil.url, &rpc_key).await;
    let second = uuid::Uuid::new_v4().simple().to_string();
    let pii_key = format!("{canary}{second}");
    let pii_index_key = format!("{second}{canary}");
    let signer_key = format!("{:0>64}", &canary); // 32 bytes of hex: a valid secp256k1 key
    let signer = LocalSigner::from_hex(&signer_key.clone().into()).unwrap();
    let hot_wallet = format!("{:#x}", signer.address());
    anvil
        .send_eth(&hot_wallet, alloy::primitives::U256::from(10u128.pow(19)))
        .await;

    let assets = dir.join("assets.json");
    write(
        &assets,
        &json!({ "version": 1, "assets": [{
            "symbol": "ETH", "chain": "anvil", "decimals": 18, "contract": null,
            "confirmations_required": 1, "deposits_enabled": true, "withdrawals_enabled": true,
            "withdrawal_min": "0.001", "withdrawal_max": "5", "daily_withdrawal_limit": "10",
            "review_threshold": "4" }] })
        .to_string(),
    );
    let key_file = dir.join("signer.key");
    write(&key_file, &signer_key);
    let api_port = free_port();
    let stack = Stack {
        dir: dir.clone(),
        env: vec![
            (
                "MONGODB_URI".into(),
                std::env::var("MONGODB_URI").expect("MONGODB_URI: run through scripts/test"),
            ),
            ("COFFER_DATABASE".into(), format!("logs_{canary}")),
            ("COFFER_AUDIT_KEY".into(), audit_key.clone()),
            ("COFFER_PII_KEY".into(), pii_key.clone()),
            ("COFFER_PII_INDEX_KEY".into(), pii_index_key.clone()),
            ("COFFER_ASSETS_FILE".into(), assets.display().to_string()),
            (
                "AMQP_URI".into(),
                std::env::var("AMQP_URI").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            ),
            (
                "COFFER_EVENTS_EXCHANGE".into(),
                format!("coffer.events.logs-{canary}"),
            ),
        ],
    };

    let (mut create, user_log) = stack.command(
        "user",
        &[
            "user",
            "create",
            "--email",
            "payments@coffer.test",
            "--role",
            "payment",
            "--password-stdin",
        ],
    );
    let mut child = create.stdin(Stdio::piped()).spawn().unwrap();
    writeln!(child.stdin.take().unwrap(), "{payment_password}").unwrap();
    assert!(child.wait().unwrap().success(), "user create");
    // A staff account: enrolled in TOTP, its otpauth:// URI on standard output only.
    let admin_email = format!("admin-{canary}@coffer.test");
    let (mut create, admin_log) = stack.command(
        "user",
        &[
            "user",
            "create",
            "--email",
            &admin_email,
            "--role",
            "admin",
            "--password-stdin",
        ],
    );
    let mut child = create
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(File::create(&admin_log).unwrap())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{admin_password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "user create admin");
    let printed = String::from_utf8(output.stdout).unwrap();
    let totp_secret = printed
        .lines()
        .find_map(|line| line.strip_prefix("otpauth://"))
        .and_then(|uri| uri.split(['?', '&']).find_map(|p| p.strip_prefix("secret=")))
        .expect("the otpauth URI on stdout")
        .to_string();
    let admin_created_log = std::fs::read_to_string(&admin_log).unwrap();

    let xpub = account_xpub_of_mnemonic(DEPOSIT_MNEMONIC).unwrap();
    let mut roles = vec![stack.spawn(
        "api",
        &["api"],
        &[
            ("COFFER_LISTEN", format!("127.0.0.1:{api_port}")),
            ("COFFER_JWT_SECRET", jwt_secret.clone()),
            ("COFFER_DEPOSIT_XPUB", xpub),
            ("COFFER_WEBHOOK_SECRET_ACME", webhook_secret.clone()),
            ("COFFER_CHAIN_RPC_URLS", format!("anvil={}", rpc.url)),
            ("COFFER_DEVICE_TRUST_DELAY_SECONDS", "0".into()),
            ("COFFER_ADDRESS_COOLING_OFF_SECONDS", "0".into()),
            ("COFFER_KYC_DEFAULT_TIER", "full".into()),
        ],
    )];
    let publisher_port = free_port();
    roles.push(stack.spawn(
        "outbox-publisher",
        &["outbox-publisher"],
        &[("COFFER_LISTEN", format!("127.0.0.1:{publisher_port}"))],
    ));
    let listener_port = free_port();
    roles.push(stack.spawn(
        "chain-listener",
        &["chain-listener", "--chain", "anvil"],
        &[
            ("COFFER_LISTEN", format!("127.0.0.1:{listener_port}")),
            ("ETH_RPC_URL", rpc.url.clone()),
            ("COFFER_POLL_INTERVAL_MS", "200".into()),
            ("COFFER_SIGNER_KEY_FILE", key_file.display().to_string()),
        ],
    ));
    let reconciler_port = free_port();
    roles.push(stack.spawn(
        "reconciler",
        &["reconciler"],
        &[
            ("COFFER_LISTEN", format!("127.0.0.1:{reconciler_port}")),
            ("COFFER_RECONCILE_INTERVAL_SECONDS", "10".into()),
            // The custody check reads the hot wallet's balance from the node.
            ("COFFER_CHAIN_RPC_URLS", format!("anvil={}", rpc.url)),
            ("COFFER_HOT_WALLET_ADDRESSES", format!("anvil={hot_wallet}")),
        ],
    ));

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let api = format!("http://127.0.0.1:{api_port}");
    wait_for("the api is ready", async || {
        client
            .get(format!("{api}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    let post = async |path: &str, token: Option<&str>, headers: &[(&str, &str)], body: Value| {
        let mut request = client
            .post(format!("{api}{path}"))
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json::<Value>().await.unwrap_or(Value::Null))
    };

    // a staff login with the current code of the enrolled secret
    let now = chrono::Utc::now().timestamp() as u64;
    let code = coffer_api::mfa::code_at(&totp_secret.clone().into(), now).unwrap();
    let (status, admin) = post(
        "/v1/auth/login",
        None,
        &[],
        json!({ "email": admin_email, "password": admin_password, "totp_code": code }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "admin login: {admin}");
    let admin_token = admin["access_token"].as_str().unwrap().to_string();

    // register, login, refresh
    let (status, registered) = post(
        "/v1/auth/register",
        None,
        &[],
        json!({ "email": email, "password": password }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    let (status, login) = post(
        "/v1/auth/login",
        None,
        &[],
        json!({ "email": email, "password": password }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, refreshed) = post(
        "/v1/auth/refresh",
        None,
        &[],
        json!({ "refresh_token": login["refresh_token"] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let token = refreshed["access_token"].as_str().unwrap().to_string();
    let (_, wallet) = post("/v1/wallets", Some(&token), &[], json!({ "asset": "ETH" })).await;
    let wallet = wallet["id"].as_str().unwrap().to_string();

    // the payment service credits the wallet
    let (_, payment) = post(
        "/v1/auth/login",
        None,
        &[],
        json!({ "email": "payments@coffer.test", "password": payment_password }),
    )
    .await;
    let payment_token = payment["access_token"].as_str().unwrap().to_string();
    let (status, _) = post(
        "/v1/deposits",
        Some(&payment_token),
        &[],
        json!({ "wallet_id": wallet, "amount": "3", "external_reference": format!("bank-{canary}") }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    // a signed webhook for a real deposit to the user's address
    let address = client
        .get(format!("{api}/v1/wallets/{wallet}/deposit-address"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let tx_hash = anvil
        .send_eth(&address, alloy::primitives::U256::from(10u128.pow(17)))
        .await;
    let receipt = anvil.receipt_of(&tx_hash).await;
    let event = json!({ "events": [{ "chain": "anvil", "tx_hash": tx_hash, "log_index": null, "to": address,
        "asset": "ETH", "amount": "0.1", "block_number": hex_u64(&receipt["blockNumber"]),
        "block_hash": receipt["blockHash"] }] });
    let body = serde_json::to_vec(&event).unwrap();
    let timestamp = chrono::Utc::now().timestamp();
    let mut mac = Hmac::<Sha256>::new_from_slice(webhook_secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&body);
    let mac_hex = hex::encode(mac.finalize().into_bytes());
    let webhook = client
        .post(format!("{api}/v1/webhooks/acme"))
        .header("content-type", "application/json")
        .header("Coffer-Signature", format!("t={timestamp},v1={mac_hex}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(webhook.status(), StatusCode::OK);
    let outcome: Value = webhook.json().await.unwrap();
    assert_eq!(
        outcome[0]["outcome"], "recorded",
        "checked against the chain: {outcome}"
    );

    // a withdrawal signed by a trusted device's key, signed for the chain with the key file and
    // followed to Confirmed
    let device_key = coffer_test_support::TestDevice::new_key();
    let public_key = coffer_test_support::TestDevice::public_key_of(&device_key);
    let registration = json!({ "name": "phone", "public_key": public_key });
    let (_, device) = post("/v1/devices", Some(&token), &[], registration).await;
    let device = coffer_test_support::TestDevice {
        id: device["id"].as_str().unwrap().to_string(),
        key: device_key,
    };
    let destination = format!("0x{}", "ab".repeat(20));
    let saved = json!({ "chain": "anvil", "address": destination, "label": "cold wallet" });
    let (status, _) = post("/v1/address-book", Some(&token), &[], saved).await;
    assert_eq!(status, StatusCode::CREATED);
    let request = json!({ "wallet_id": wallet, "amount": "1", "destination_address": destination });
    let signed = device.sign("POST", "/v1/withdrawals", &serde_json::to_vec(&request).unwrap());
    let headers: Vec<(&str, &str)> = signed.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let (status, withdrawal) = post(
        "/v1/withdrawals",
        login["access_token"].as_str(),
        &headers,
        request,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{withdrawal}");
    let id = withdrawal["id"].as_str().unwrap().to_string();
    wait_for("the withdrawal is confirmed", async || {
        let view: Value = client
            .get(format!("{api}/v1/transactions/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        view["state"] == "confirmed"
    })
    .await;
    wait_for("events are published", async || {
        metric(&client, publisher_port, "coffer_outbox_published_total").await >= 5.0
    })
    .await;
    wait_for("a reconciliation ran", async || {
        metric(&client, reconciler_port, "coffer_reconciliation_runs_total").await >= 1.0
    })
    .await;
    for mut role in roles.drain(..) {
        let _ = role.child.kill();
        let _ = role.child.wait();
        let log = std::fs::read_to_string(&role.log).unwrap();
        check_log(
            role.name,
            &log,
            &secrets(&[
                &email,
                &format!("pii-{canary}"),
                &password,
                &payment_password,
                &jwt_secret,
                &audit_key,
                &webhook_secret,
                &mac_hex,
                &signer_key,
                login["access_token"].as_str().unwrap(),
                login["refresh_token"].as_str().unwrap(),
                refreshed["refresh_token"].as_str().unwrap(),
                &token,
                &payment_token,
                &admin_password,
                &totp_secret,
                &admin_token,
                &admin_email,
                &rpc.url,
                &rpc_key,
                &pii_key,
                &pii_index_key,
            ]),
        );
    }
    let log = std::fs::read_to_string(&user_log).unwrap();
    check_log(
        "user",
        &log,
        &secrets(&[&payment_password, &pii_key, &pii_index_key, &audit_key]),
    );
    check_log(
        "user",
        &admin_created_log,
        &secrets(&[
            &admin_password,
            &totp_secret,
            &admin_email,
            &pii_key,
            &pii_index_key,
        ]),
    );
    assert_eq!(ROLES.len(), 5);
    let _ = std::fs::remove_dir_all(&dir);
}

fn secrets(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

/// Every line is JSON with the fields an SRE filters on; no secret appears, in any case.
fn check_log(role: &str, log: &str, secrets: &[String]) {
    assert!(!log.trim().is_empty(), "{role} wrote no log");
    let lower = log.to_lowercase();
    for secret in secrets {
        assert!(
            !lower.contains(&secret.to_lowercase()),
            "{role}'s log contains a secret or personal value ({} characters)",
            secret.len()
        );
    }
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: Value = serde_json::from_str(line)
            .unwrap_or_else(|_| panic!("{role}: a log line is not JSON: {}", &line[..line.len().min(200)]));
        for field in ["timestamp", "level", "target"] {
            assert!(
                parsed.get(field).is_some(),
                "{role}: a line without {field}: {line}"
            );
        }
        lines += 1;
    }
    assert!(lines > 0);
    assert!(
        log.contains(&format!("\"role\":\"{role}\"")),
        "{role}: the start line names the role"
    );
}
