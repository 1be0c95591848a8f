//! The seeded workload: users funded by rail deposits delivered twice, and 16 clients sending
//! transfers with Idempotency-Keys, retrying unanswered requests with the same key on either
//! API replica. Every answer is recorded for the final checks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};

pub const USERS: usize = 50;
pub const CLIENTS: usize = 16;
/// Each user's rail deposit, in milli-ETH.
pub const FUNDING_MILLI: u128 = 20_000;
/// One milli-ETH in wei.
pub const MILLI: u128 = 1_000_000_000_000_000;

/// `milli` milli-ETH as the API's decimal string.
pub fn eth_text(milli: u128) -> String {
    format!("{}.{:03}", milli / 1000, milli % 1000)
}

/// A user of the run: their session, their ETH wallet, and (for withdrawals) a device key.
#[derive(Clone)]
pub struct User {
    pub id: String,
    pub token: String,
    pub wallet: String,
    pub device: Option<coffer_test_support::TestDevice>,
    /// A saved withdrawal destination.
    pub destination: Option<String>,
    /// The wallet's chain deposit address.
    pub deposit_address: Option<String>,
}

/// How a money request ended: answered (status, body), or not after every retry.
#[derive(Clone, Debug)]
pub enum Outcome {
    Answered { status: StatusCode, body: Value },
    Unanswered,
}

/// One money request of the workload, with its final answer.
#[derive(Clone, Debug)]
pub struct Record {
    pub op: &'static str,
    pub key: String,
    pub attempts: u32,
    pub outcome: Outcome,
}

impl Record {
    /// The transaction of a 2xx answer.
    pub fn transaction(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Answered { status, body } if status.is_success() => body["id"].as_str(),
            _ => None,
        }
    }

    pub fn refused(&self) -> bool {
        matches!(&self.outcome, Outcome::Answered { status, .. } if status.is_client_error())
    }
}

/// One request: where, as whom, with which Idempotency-Key and body.
pub struct Call<'a> {
    pub method: reqwest::Method,
    pub path: &'a str,
    pub token: Option<&'a str>,
    pub key: Option<&'a str>,
    pub body: Option<&'a Value>,
}

impl<'a> Call<'a> {
    pub fn post(path: &'a str, token: Option<&'a str>, key: &'a str, body: &'a Value) -> Call<'a> {
        Call {
            method: reqwest::Method::POST,
            path,
            token,
            key: Some(key),
            body: Some(body),
        }
    }

    pub fn get(path: &'a str, token: &'a str) -> Call<'a> {
        Call {
            method: reqwest::Method::GET,
            path,
            token: Some(token),
            key: None,
            body: None,
        }
    }
}

/// The two API replicas and an HTTP client.
pub struct Http {
    pub client: reqwest::Client,
    pub apis: Vec<String>,
    pub records: Mutex<Vec<Record>>,
    /// Answers that were neither success, refusal nor retry_later (5xx other than 503).
    pub server_errors: Mutex<Vec<String>>,
}

/// Longest a request is retried (the same key, alternating replicas).
const RETRY_FOR: Duration = Duration::from_secs(60);

impl Http {
    pub fn new(apis: Vec<String>) -> Arc<Http> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("client");
        Arc::new(Http {
            client,
            apis,
            records: Mutex::default(),
            server_errors: Mutex::default(),
        })
    }

    /// One attempt of `call` on `replica`.
    pub async fn send(
        &self,
        replica: usize,
        call: &Call<'_>,
        headers: &[(String, String)],
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let url = format!("{}{}", self.apis[replica % self.apis.len()], call.path);
        let mut request = self.client.request(call.method.clone(), url);
        if let Some(token) = call.token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = call.key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = call.body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await?;
        let status = response.status();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// A POST retried with the same key until answered (bounded), starting on `replica` and
    /// alternating; `headers` are made afresh for each attempt (device signatures).
    pub async fn money(
        &self,
        op: &'static str,
        replica: usize,
        call: Call<'_>,
        headers: impl Fn() -> Vec<(String, String)>,
    ) -> Record {
        let started = Instant::now();
        let mut attempts = 0;
        let outcome = loop {
            attempts += 1;
            let sent = self
                .send(replica + attempts as usize - 1, &call, &headers())
                .await;
            match sent {
                Ok((status, body)) if status.is_success() || status.is_client_error() => {
                    let in_progress = body["code"] == "idempotency_key_in_progress";
                    if status != StatusCode::TOO_MANY_REQUESTS && !in_progress {
                        break Outcome::Answered { status, body };
                    }
                }
                Ok((status, body)) if status != StatusCode::SERVICE_UNAVAILABLE => {
                    self.server_errors
                        .lock()
                        .expect("errors")
                        .push(format!("{op} {}: {status} {body}", call.key.unwrap_or_default()));
                }
                _ => {}
            }
            if started.elapsed() > RETRY_FOR {
                break Outcome::Unanswered;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let record = Record {
            op,
            key: call.key.unwrap_or_default().to_string(),
            attempts,
            outcome,
        };
        self.records.lock().expect("records").push(record.clone());
        record
    }

    /// A POST without money (registration, wallets, devices), retried until 2xx (bounded).
    pub async fn setup(&self, path: &str, token: Option<&str>, body: &Value) -> anyhow::Result<Value> {
        let key = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        for attempt in 0.. {
            let sent = self
                .send(attempt, &Call::post(path, token, &key, body), &[])
                .await;
            if let Ok((status, body)) = &sent {
                if status.is_success() {
                    return Ok(body.clone());
                }
                anyhow::ensure!(
                    !status.is_client_error() || *status == StatusCode::TOO_MANY_REQUESTS,
                    "POST {path}: {status} {body}"
                );
            }
            anyhow::ensure!(started.elapsed() < RETRY_FOR, "POST {path}: no answer: {sent:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        unreachable!()
    }

    pub async fn get(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        let started = Instant::now();
        for attempt in 0.. {
            let sent = self.send(attempt, &Call::get(path, token), &[]).await;
            if let Ok((status, body)) = &sent {
                if status.is_success() {
                    return Ok(body.clone());
                }
            }
            anyhow::ensure!(started.elapsed() < RETRY_FOR, "GET {path}: {sent:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        unreachable!()
    }
}

/// Registers `USERS` users, each with an ETH wallet (8 at a time).
pub async fn users(http: &Arc<Http>, run: &str) -> anyhow::Result<Vec<User>> {
    let mut users = Vec::new();
    for chunk in (0..USERS).collect::<Vec<_>>().chunks(8) {
        let made = futures::future::join_all(chunk.iter().map(|i| {
            let http = http.clone();
            let email = format!("faults-{run}-{i}@example.com");
            async move {
                let body = json!({ "email": email, "password": "faults harness password" });
                let session = http.setup("/v1/auth/register", None, &body).await?;
                let token = session["access_token"].as_str().unwrap_or_default().to_string();
                let wallet = http
                    .setup("/v1/wallets", Some(&token), &json!({ "asset": "ETH" }))
                    .await?;
                anyhow::Ok(User {
                    id: session["user_id"].as_str().unwrap_or_default().to_string(),
                    token,
                    wallet: wallet["id"].as_str().unwrap_or_default().to_string(),
                    device: None,
                    destination: None,
                    deposit_address: None,
                })
            }
        }))
        .await;
        for user in made {
            users.push(user?);
        }
    }
    Ok(users)
}

/// Funds every user by a rail deposit delivered twice (two keys, one external reference):
/// even users' two deliveries at once, odd users' one after the other.
pub async fn fund(http: &Arc<Http>, payment: &str, users: &[User], run: &str) {
    let deliveries = users.iter().enumerate().map(|(i, user)| {
        let http = http.clone();
        let payment = payment.to_string();
        let body = json!({ "wallet_id": user.wallet, "amount": eth_text(FUNDING_MILLI),
            "external_reference": format!("rail-{run}-{i}") });
        async move {
            let deliver = |n: usize| {
                let (http, payment, body) = (http.clone(), payment.clone(), body.clone());
                async move {
                    let key = format!("rail-{i}-{n}");
                    let call = Call::post("/v1/deposits", Some(&payment), &key, &body);
                    http.money("rail_deposit", i + n, call, Vec::new).await
                }
            };
            if i % 2 == 0 {
                futures::future::join(deliver(0), deliver(1)).await;
            } else {
                deliver(0).await;
                deliver(1).await;
            }
        }
    });
    futures::stream::iter(deliveries)
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
}

use futures::StreamExt;

/// The hot wallet every fifth transfer goes to (user 0's).
pub const HOT: usize = 0;

/// Client `c`: transfers out of its users' wallets until `deadline`; some to the hot wallet,
/// some too large (refused).
pub async fn transfer_client(c: usize, seed: u64, http: Arc<Http>, users: Arc<Vec<User>>, deadline: Instant) {
    let mut rng = StdRng::seed_from_u64(seed ^ (0x7472_616e << 8) ^ c as u64);
    let mine: Vec<usize> = (0..users.len()).filter(|i| i % CLIENTS == c).collect();
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        let from = mine[rng.gen_range(0..mine.len())];
        let mut to = if rng.gen_bool(0.2) {
            HOT
        } else {
            rng.gen_range(0..users.len())
        };
        if to == from {
            to = (from + 1) % users.len();
        }
        let milli = if rng.gen_bool(0.1) {
            1_000_000
        } else {
            rng.gen_range(1..=200)
        };
        let body = json!({ "from_wallet_id": users[from].wallet, "to_wallet_id": users[to].wallet,
            "amount": eth_text(milli) });
        let key = format!("t-{c}-{n}");
        let replica = rng.gen_range(0..2);
        let call = Call::post("/v1/transfers", Some(&users[from].token), &key, &body);
        http.money("transfer", replica, call, Vec::new).await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..150))).await;
    }
}
