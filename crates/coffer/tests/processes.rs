//! Issue 12: correctness does not depend on one process's memory. Two `coffer api` processes on
//! one database drain one wallet exactly, and a process killed between a batch's commit and its
//! answers leaves a retry that replays the stored response and moves nothing twice; one killed
//! inside a transaction blocks its wallets for seconds, not the server's transaction lifetime.
//!
//! Needs what scripts/test starts: the MongoDB-compatible server (`MONGODB_URI`).

use std::path::Path;

use coffer_test_support::process::{api_env, create_payment_account, free_port, wait_ready, Process, Roles};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";

/// An API process on its own port.
struct Api {
    process: Process,
    url: String,
}

fn roles(label: &str) -> Roles {
    let mut env = api_env("proc");
    env.extend([
        ("COFFER_RATE_MONEY_PER_USER_PER_MINUTE".into(), "100000".into()),
        ("COFFER_RATE_MONEY_PER_IP_PER_MINUTE".into(), "100000".into()),
        ("COFFER_RATE_AUTH_PER_IP_PER_MINUTE".into(), "100000".into()),
    ]);
    Roles::new(Path::new(env!("CARGO_BIN_EXE_coffer")), label, env)
}

async fn api(roles: &Roles, name: &str, client: &reqwest::Client, faults: Option<&str>) -> Api {
    let port = free_port();
    let mut extra = vec![("COFFER_LISTEN", format!("127.0.0.1:{port}"))];
    if let Some(faults) = faults {
        extra.push(("COFFER_FAULTS", faults.to_string()));
    }
    let process = roles.spawn(name, &["api"], &extra);
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(client, &format!("{url}/readyz")).await;
    Api { process, url }
}

/// POST with an explicit Idempotency-Key; Err when the connection failed (the process died).
async fn post(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    key: &str,
    body: Value,
) -> Result<(StatusCode, reqwest::header::HeaderMap, Value), reqwest::Error> {
    let mut request = client.post(url).header("Idempotency-Key", key).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let (status, headers) = (response.status(), response.headers().clone());
    Ok((status, headers, response.json().await.unwrap_or(Value::Null)))
}

/// Registers a user and opens an ETH wallet; (access token, wallet id).
async fn user_with_wallet(client: &reqwest::Client, api: &Api) -> (String, String) {
    let email = format!("u-{}@example.com", uuid::Uuid::new_v4().simple());
    let register = json!({ "email": email, "password": PASSWORD });
    let url = format!("{}/v1/auth/register", api.url);
    let (status, _, body) = post(client, &url, None, "r", register).await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    let url = format!("{}/v1/wallets", api.url);
    let key = uuid::Uuid::new_v4().to_string();
    let (status, _, wallet) = post(client, &url, Some(&token), &key, json!({ "asset": "ETH" }))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{wallet}");
    (token, wallet["id"].as_str().unwrap().to_string())
}

/// Creates the payment service account and credits `amount` to `wallet` through `api`.
async fn fund(roles: &Roles, client: &reqwest::Client, api: &Api, wallet: &str, amount: &str) {
    let created = create_payment_account(roles, "payments@coffer.test", PASSWORD);
    assert!(created, "user create");
    let login = json!({ "email": "payments@coffer.test", "password": PASSWORD });
    let url = format!("{}/v1/auth/login", api.url);
    let (_, _, session) = post(client, &url, None, "l", login).await.unwrap();
    let token = session["access_token"].as_str().unwrap();
    let deposit = json!({ "wallet_id": wallet, "amount": amount, "external_reference": "seed" });
    let url = format!("{}/v1/deposits", api.url);
    let (status, _, body) = post(client, &url, Some(token), "d", deposit).await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn available(client: &reqwest::Client, api: &Api, token: &str, wallet: &str) -> String {
    let response = client
        .get(format!("{}/v1/wallets/{wallet}", api.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    body["available"].as_str().unwrap().to_string()
}

/// Two API processes on one database, a funded wallet (10 ETH) and a transfer of 1 out of it;
/// `doomed` aborts the first time it passes the fault point `fault`.
struct Scene {
    roles: Roles,
    client: reqwest::Client,
    survivor: Api,
    doomed: Api,
    alice: String,
    source: String,
    transfer: Value,
}

async fn scene(label: &str, fault: &str) -> Scene {
    let roles = roles(label);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let survivor = api(&roles, "api-survivor", &client, None).await;
    let (alice, source) = user_with_wallet(&client, &survivor).await;
    let (_, target) = user_with_wallet(&client, &survivor).await;
    fund(&roles, &client, &survivor, &source, "10").await;
    let doomed = api(&roles, "api-doomed", &client, Some(&format!("{fault}=1"))).await;
    let transfer = json!({ "from_wallet_id": source, "to_wallet_id": target, "amount": "1" });
    Scene {
        roles,
        client,
        survivor,
        doomed,
        alice,
        source,
        transfer,
    }
}

/// Waits (at most 30 s) for `doomed` to have aborted at the fault point `fault`.
async fn died_at_fault(mut doomed: Api, fault: &str) {
    let exited = tokio::task::spawn_blocking(move || {
        let status = doomed.process.child.wait();
        (doomed, status)
    });
    let (mut doomed, status) = tokio::time::timeout(std::time::Duration::from_secs(30), exited)
        .await
        .expect("the process ends")
        .unwrap();
    assert!(!status.unwrap().success(), "the process aborted");
    assert!(doomed
        .process
        .log_text()
        .contains(&format!("fault point {fault}")));
    doomed.process.kill();
}

/// `coffer ledger verify` against the test's database: no finding.
fn assert_ledger_verifies(roles: &Roles) {
    let (mut command, log) = roles.command("verify", &["ledger", "verify"], &[]);
    let status = command.status().expect("run ledger verify");
    let output = std::fs::read_to_string(log).unwrap_or_default();
    assert!(status.success(), "ledger verify found differences: {output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_api_processes_on_one_database_drain_one_wallet_exactly() {
    let roles = roles("two-apis");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let first = api(&roles, "api-1", &client, None).await;
    let second = api(&roles, "api-2", &client, None).await;
    let (alice, source) = user_with_wallet(&client, &first).await;
    let (_, target) = user_with_wallet(&client, &second).await;
    fund(&roles, &client, &first, &source, "10").await;

    let transfer = json!({ "from_wallet_id": source, "to_wallet_id": target, "amount": "0.3" });
    let send = |i: usize| {
        let url = format!("{}/v1/transfers", [&first, &second][i % 2].url);
        let (client, alice, body) = (client.clone(), alice.clone(), transfer.clone());
        async move {
            post(&client, &url, Some(&alice), &format!("t-{i}"), body)
                .await
                .unwrap()
        }
    };
    // First one at a time, alternating: each process's knowledge of the wallet is always one
    // write behind, and only the database's version check keeps it from spending twice.
    let mut replies = Vec::new();
    for i in 0..20 {
        replies.push(send(i).await);
    }
    // Then 44 at once, alternating: the two processes' batches conflict in the database.
    replies.extend(futures::future::join_all((20..64).map(send)).await);
    let created = replies.iter().filter(|r| r.0 == StatusCode::CREATED).count();
    let refused = replies
        .iter()
        .filter(|r| r.0 == StatusCode::UNPROCESSABLE_ENTITY && r.2["code"] == "insufficient_funds")
        .count();
    let other: Vec<_> = replies
        .iter()
        .filter(|r| r.0 != StatusCode::CREATED && r.2["code"] != "insufficient_funds")
        .collect();
    assert!(
        other.is_empty(),
        "every transfer either moved or was refused: {other:?}"
    );
    assert!(
        replies[..20].iter().all(|r| r.0 == StatusCode::CREATED),
        "the first 6 ETH are there"
    );
    assert_eq!(
        (created, refused),
        (33, 31),
        "floor(10 / 0.3) fit; the rest could not be covered"
    );
    assert_eq!(available(&client, &second, &alice, &source).await, "0.1");
    assert_ledger_verifies(&roles);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_killed_between_commit_and_answer_replays_on_retry_and_moves_nothing_twice() {
    // The doomed process dies right after its first batch commits, before it answers anyone.
    let Scene {
        roles,
        client,
        survivor,
        doomed,
        alice,
        source,
        transfer,
    } = scene("kill-after-commit", "ledger.after_commit").await;
    let keys: Vec<String> = (0..8).map(|i| format!("k-{i}")).collect();
    let sends = keys.iter().map(|key| {
        let url = format!("{}/v1/transfers", doomed.url);
        let (client, alice, body) = (client.clone(), alice.clone(), transfer.clone());
        async move { post(&client, &url, Some(&alice), key, body).await }
    });
    let first_tries = futures::future::join_all(sends).await;
    assert!(
        first_tries.iter().all(Result::is_err),
        "nobody got an answer: {first_tries:?}"
    );
    died_at_fault(doomed, "ledger.after_commit").await;

    // Every client retries with its key on the surviving process.
    let mut replayed = 0;
    let mut transactions = std::collections::BTreeSet::new();
    for key in &keys {
        let url = format!("{}/v1/transfers", survivor.url);
        let (status, headers, body) = post(&client, &url, Some(&alice), key, transfer.clone())
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        replayed += usize::from(headers.get("idempotent-replayed").is_some());
        transactions.insert(body["id"].as_str().unwrap().to_string());
    }
    assert!(
        replayed >= 1,
        "the batch that committed before the kill is replayed, not re-run"
    );
    assert_eq!(transactions.len(), 8, "one transaction per key");
    assert_eq!(
        available(&client, &survivor, &alice, &source).await,
        "2",
        "8 transfers of 1, each once"
    );
    assert_ledger_verifies(&roles);
}

/// Issue 15: a process killed inside a transaction (its batch written, the commit not sent)
/// leaves the wallets it was writing to the other processes within five seconds: they end its
/// sessions once its lease lapses, instead of waiting out the server's transaction lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_killed_inside_a_transaction_blocks_its_wallets_for_at_most_five_seconds() {
    let Scene {
        roles,
        client,
        survivor,
        doomed,
        alice,
        source,
        transfer,
    } = scene("kill-before-commit", "ledger.before_commit").await;
    let url = format!("{}/v1/transfers", doomed.url);
    let first = post(&client, &url, Some(&alice), "doomed", transfer.clone()).await;
    assert!(first.is_err(), "the process died before it answered: {first:?}");
    died_at_fault(doomed, "ledger.before_commit").await;
    let died = std::time::Instant::now();

    // The same wallets through the survivor: 503 retry_later while the dead transaction holds
    // them, then 201. One key, retried as a client would.
    let url = format!("{}/v1/transfers", survivor.url);
    let mut refusals = 0;
    loop {
        let (status, _, body) = post(&client, &url, Some(&alice), "after", transfer.clone())
            .await
            .unwrap();
        if status == StatusCode::CREATED {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["code"], "retry_later", "{body}");
        refusals += 1;
        assert!(
            died.elapsed() < std::time::Duration::from_secs(90),
            "the wallets stayed blocked for 90 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let blocked = died.elapsed();
    eprintln!(
        "wallets served again {:.2} s after the kill ({refusals} x 503)",
        blocked.as_secs_f64()
    );
    assert!(
        blocked < std::time::Duration::from_secs(5),
        "blocked for {blocked:?}: the dead process's transaction was not ended"
    );
    assert_eq!(
        available(&client, &survivor, &alice, &source).await,
        "9",
        "the dead process's transfer never committed; the survivor's did, once"
    );
    assert_ledger_verifies(&roles);
}

/// `coffer audit verify --heads PATH` with `extra` settings: its exit code and standard output.
fn audit_verify(roles: &Roles, heads: &Path, extra: &[(&str, String)]) -> (Option<i32>, String) {
    let heads = heads.display().to_string();
    let (mut command, _) = roles.command("audit-verify", &["audit", "verify", "--heads", &heads], extra);
    let output = command
        .stdout(std::process::Stdio::piped())
        .output()
        .expect("run audit verify");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_exits_0_against_the_reconcilers_export_and_1_when_the_export_disagrees() {
    let roles = roles("audit-verify");
    let user = [
        "user",
        "create",
        "--email",
        "ops@coffer.test",
        "--role",
        "payment",
        "--password-stdin",
    ];
    assert!(
        roles.run_with_stdin("user", &user, PASSWORD),
        "user create (audited)"
    );
    let heads = roles.dir.join("audit-heads.jsonl");
    let export = [
        ("COFFER_AUDIT_HEADS_PATH", heads.display().to_string()),
        ("COFFER_AUDIT_EXPORT_INTERVAL_SECONDS", "1".to_string()),
        ("COFFER_LISTEN", format!("127.0.0.1:{}", free_port())),
    ];
    let mut reconciler = roles.spawn("reconciler", &["reconciler"], &export);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_to_string(&heads)
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no heads exported: {}",
            reconciler.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    reconciler.kill();

    let (code, output) = audit_verify(&roles, &heads, &[]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("audit chains intact"), "{output}");

    // The export says a shard went further than the database holds: a cut tail, or an edited
    // export (its MAC no longer matches). Either way: exit 1, naming what disagrees.
    let text = std::fs::read_to_string(&heads).unwrap();
    let mut line: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    line["heads"][0]["seq"] = json!(line["heads"][0]["seq"].as_i64().unwrap() + 5);
    let edited = roles.dir.join("edited-heads.jsonl");
    std::fs::write(&edited, format!("{line}\n")).unwrap();
    let (code, output) = audit_verify(&roles, &edited, &[]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("export was edited"), "{output}");

    // Verified with another key, the genuine export is refused too: the key is what proves it.
    let other_key = (
        "COFFER_AUDIT_KEY",
        "another-audit-key-0c9b8a7f6e5d4c3b2a19".to_string(),
    );
    let (code, output) = audit_verify(&roles, &heads, &[other_key]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("unknown key"), "{output}");
}

#[test]
fn a_weak_audit_key_is_refused_at_start_naming_the_setting_never_its_value() {
    let roles = roles("weak-audit-key");
    for weak in ["too-short-key", &"abcd".repeat(10)] {
        let (mut command, log) = roles.command(
            "weak",
            &["ledger", "verify"],
            &[("COFFER_AUDIT_KEY", weak.to_string())],
        );
        let status = command.status().expect("run coffer");
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(!status.success(), "{weak}: {log}");
        assert!(log.contains("COFFER_AUDIT_KEY is refused"), "{log}");
        assert!(!log.contains(weak), "the key's value is never printed: {log}");
    }
}

/// Issue 14 item 4: each role refuses a weak, default or missing secret before it does anything,
/// exits non-zero, and names the variable but never the value.
#[test]
fn every_role_refuses_a_weak_default_or_missing_secret_naming_the_variable_never_its_value() {
    let roles = roles("weak-secrets");
    let zeros = "00".repeat(32);
    let low_entropy = (0u8..31).map(|b| format!("{:02x}", b % 10)).collect::<String>() + "ff";
    let pii_key = coffer_test_support::TEST_PII_KEY.to_string();
    let cases: Vec<(&[&str], &str, Option<String>, &str)> = vec![
        (
            &["api"],
            "COFFER_JWT_SECRET",
            Some("Change-Me".into()),
            "COFFER_JWT_SECRET is refused",
        ),
        (
            &["api"],
            "COFFER_JWT_SECRET",
            Some("short-jwt-secret".into()),
            "COFFER_JWT_SECRET is refused",
        ),
        (
            &["api"],
            "COFFER_WEBHOOK_SECRET_ACME_PAY",
            Some("whsec".repeat(8)),
            "COFFER_WEBHOOK_SECRET_ACME_PAY is refused",
        ),
        (
            &["api"],
            "COFFER_WEBHOOK_SECRET_ACME",
            Some("password".into()),
            "COFFER_WEBHOOK_SECRET_ACME is refused",
        ),
        (
            &["api"],
            "COFFER_PII_KEY",
            Some(zeros.clone()),
            "COFFER_PII_KEY is refused",
        ),
        (
            &["api"],
            "COFFER_PII_KEY",
            Some(low_entropy.clone()),
            "COFFER_PII_KEY is refused",
        ),
        (&["api"], "COFFER_PII_KEY", None, "COFFER_PII_KEY is required"),
        (
            &["api"],
            "COFFER_PII_INDEX_KEY",
            None,
            "COFFER_PII_INDEX_KEY is required",
        ),
        (
            &["api"],
            "COFFER_PII_INDEX_KEY",
            Some(pii_key.clone()),
            "COFFER_PII_INDEX_KEY is refused",
        ),
        (
            &["api"],
            "COFFER_PII_KEYS_PREVIOUS",
            Some(format!("{pii_key},{zeros}")),
            "COFFER_PII_KEYS_PREVIOUS is refused",
        ),
        (
            &["api"],
            "COFFER_AUDIT_KEY",
            Some("audit".repeat(8)),
            "COFFER_AUDIT_KEY is refused",
        ),
        (
            &[
                "user",
                "create",
                "--email",
                "staff@coffer.test",
                "--role",
                "admin",
                "--password-stdin",
            ],
            "COFFER_PII_KEY",
            Some("not-a-hex-key".into()),
            "COFFER_PII_KEY is refused",
        ),
        (
            &[
                "user",
                "create",
                "--email",
                "staff@coffer.test",
                "--role",
                "admin",
                "--password-stdin",
            ],
            "COFFER_PII_KEY",
            None,
            "COFFER_PII_KEY is required",
        ),
        (
            &["outbox-publisher"],
            "COFFER_PII_KEY",
            Some(zeros.clone()),
            "COFFER_PII_KEY is refused",
        ),
        (
            &["reconciler"],
            "COFFER_AUDIT_KEY",
            Some("changeme".into()),
            "COFFER_AUDIT_KEY is refused",
        ),
        (
            &["reconciler"],
            "COFFER_LIABILITY_SIGNING_KEY",
            Some("42".repeat(32)),
            "COFFER_LIABILITY_SIGNING_KEY is refused",
        ),
    ];
    for (index, (args, variable, value, expected)) in cases.into_iter().enumerate() {
        let extra: Vec<(&str, String)> = value.iter().map(|v| (variable, v.clone())).collect();
        let (mut command, log) = roles.command(&format!("weak-{index}"), args, &extra);
        if value.is_none() {
            command.env_remove(variable);
        }
        let status = command.status().expect("run coffer");
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(!status.success(), "{args:?} {variable} accepted: {log}");
        assert!(log.contains(expected), "{args:?} {variable}: {log}");
        if let Some(value) = value {
            assert!(!log.contains(&value), "{variable}'s value is printed: {log}");
        }
    }
}
