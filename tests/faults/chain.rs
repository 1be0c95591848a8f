//! The chain and event sides of the run: deposits from anvil's funded accounts seen by the
//! listener (half also reported by a signed provider webhook delivered twice, out of order),
//! withdrawals signed with the user's device key, two re-orgs (one removing a credited deposit),
//! and the broker queue every committed event must reach.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_chain::signer::Signer as _;
use coffer_store::mongodb::bson::{doc, Document};
use coffer_test_support::TestDevice;
use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::checks::Findings;
use crate::workload::{eth_text, Call, Http, User, MILLI};
use crate::{Stack, HOT_ADDRESS, WEBHOOK_SECRET};

/// Users with a device and a saved destination (withdrawals), and with a deposit address.
const WITHDRAWERS: usize = 8;
const DEPOSITORS: usize = 20;
/// anvil's unlocked, funded accounts deposits come from (not the hot wallet, account 1).
const FUNDERS: [&str; 3] = [
    coffer_test_support::chain::FUNDER,
    "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc",
    "0x90f79bf6eb2c4f870365e785982e1f101e93b906",
];
const QUEUE: &str = "coffer-faults.all";

/// The durable queue bound with `#` on the private node's exchange.
pub struct EventQueue {
    uri: String,
}

impl EventQueue {
    pub async fn declare(uri: &str, exchange: &str) -> anyhow::Result<EventQueue> {
        let connection = coffer_events::broker::connect(uri, "coffer-faults").await?;
        let channel = connection.create_channel().await?;
        coffer_events::broker::declare_exchange(&channel, exchange).await?;
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(QUEUE.into(), options, FieldTable::default())
            .await?;
        let bind = QueueBindOptions::default();
        channel
            .queue_bind(
                QUEUE.into(),
                exchange.into(),
                "#".into(),
                bind,
                FieldTable::default(),
            )
            .await?;
        let _ = connection.close(200, "declared".into()).await;
        Ok(EventQueue { uri: uri.to_string() })
    }

    /// Every committed, not dead-lettered outbox row reached the queue; nothing else did. The
    /// rows are read again while draining (bounded), so a late publish is not a false miss.
    pub async fn check(&self, store: &coffer_store::Store, findings: &mut Findings) {
        let Ok(connection) = coffer_events::broker::connect(self.uri.as_str(), "coffer-faults-drain").await
        else {
            findings.violation("the private broker did not answer after the run".into());
            return;
        };
        let Ok(channel) = connection.create_channel().await else {
            return;
        };
        let (mut seen, mut received) = (HashSet::new(), 0u64);
        let deadline = Instant::now() + Duration::from_secs(60);
        let (expected, dead, all) = loop {
            for _ in 0..200_000 {
                match channel
                    .basic_get(QUEUE.into(), BasicGetOptions { no_ack: true })
                    .await
                {
                    Ok(Some(message)) => {
                        received += 1;
                        let id = message
                            .delivery
                            .properties
                            .message_id()
                            .as_ref()
                            .map(|m| m.to_string());
                        seen.insert(id.unwrap_or_default());
                    }
                    _ => break,
                }
            }
            let rows = store.outbox_rows().await.unwrap_or_default();
            let all: HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
            let dead = rows.iter().filter(|r| r.dead_lettered_at.is_some()).count();
            let expected: HashSet<String> = rows
                .iter()
                .filter(|r| r.dead_lettered_at.is_none())
                .map(|r| r.id.clone())
                .collect();
            if expected.is_subset(&seen) || Instant::now() > deadline {
                break (expected, dead, all);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let rows = store.outbox_rows().await.unwrap_or_default();
        let inversions = id_inversions(&rows);
        println!(
            "events: {inversions} row(s) whose id sorts before an earlier-sequenced row of its partition"
        );
        findings.figure("outbox id inversions (seq order)", inversions);
        let missing: Vec<&String> = expected.difference(&seen).collect();
        let foreign: Vec<&String> = seen.difference(&all).collect();
        println!(
            "events: {} committed ({dead} dead-lettered, kept apart), {received} messages received, {} distinct, {} missing",
            expected.len() + dead,
            seen.len(),
            missing.len()
        );
        findings.figure("events", expected.len() as u64);
        findings.figure("event duplicates (same id)", received - seen.len() as u64);
        if !missing.is_empty() {
            let first: Vec<_> = missing.iter().take(5).collect();
            findings.violation(format!(
                "{} committed event(s) never reached the broker, e.g. {first:?}",
                missing.len()
            ));
        }
        if !foreign.is_empty() {
            findings.violation(format!("{} message(s) with no outbox row", foreign.len()));
        }
        let _ = connection.close(200, "bye".into()).await;
    }
}

/// Rows whose id sorts before a row of the same partition with a lower sequence number: a
/// stream client resuming `after` the later-sequenced one would never be sent them.
fn id_inversions(rows: &[coffer_store::OutboxDoc]) -> u64 {
    let mut by_partition: std::collections::BTreeMap<i32, Vec<(i64, &str)>> = Default::default();
    for row in rows {
        by_partition
            .entry(row.partition)
            .or_default()
            .push((row.seq, row.id.as_str()));
    }
    let mut inverted = 0;
    for rows in by_partition.values_mut() {
        rows.sort();
        let mut highest = "";
        for (_, id) in rows.iter() {
            if *id < highest {
                inverted += 1;
            }
            highest = highest.max(id);
        }
    }
    inverted
}

/// Devices and saved destinations for the withdrawers, deposit addresses for the depositors.
pub async fn prepare(http: &Http, users: &mut [User]) -> anyhow::Result<()> {
    for user in users.iter_mut().take(WITHDRAWERS) {
        let key = TestDevice::new_key();
        let body = json!({ "name": "faults phone", "public_key": TestDevice::public_key_of(&key) });
        let device = http.setup("/v1/devices", Some(&user.token), &body).await?;
        user.device = Some(TestDevice {
            id: device["id"].as_str().unwrap_or_default().to_string(),
            key,
        });
        let destination = format!("{:#x}", coffer_chain::signer::LocalSigner::random().address());
        let body = json!({ "chain": "anvil", "address": destination, "label": "faults cold wallet" });
        http.setup("/v1/address-book", Some(&user.token), &body).await?;
        user.destination = Some(destination);
    }
    for user in users.iter_mut().take(DEPOSITORS) {
        let path = format!("/v1/wallets/{}/deposit-address", user.wallet);
        let address = http.get(&path, &user.token).await?;
        user.deposit_address = address["address"].as_str().map(str::to_lowercase);
    }
    Ok(())
}

/// What the chain driver did, for the checks.
#[derive(Default)]
pub struct ChainFigures {
    pub hot_start_wei: u128,
    pub deposits: u64,
    pub webhooks: u64,
    pub withdrawals: Vec<String>,
    pub reorgs: u64,
    pub reorged_credited: Option<String>,
}

fn wei_of(value: alloy::primitives::U256) -> u128 {
    value.to_string().parse().unwrap_or(u128::MAX)
}

fn hex_u64(value: &Value) -> u64 {
    value
        .as_str()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

fn hex_u128(value: &Value) -> u128 {
    value
        .as_str()
        .and_then(|s| u128::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

/// Sends `milli` milli-ETH from `from` to `to` and waits for its receipt.
async fn deposit(stack: &Stack, from: &str, to: &str, milli: u128) -> Value {
    let tx = json!({ "from": from, "to": to, "value": format!("{:#x}", milli * MILLI) });
    stack.anvil.send_and_mine(tx).await
}

/// The provider's report of a deposit as mined.
fn webhook_event(receipt: &Value, to: &str, milli: u128) -> Value {
    json!({ "chain": "anvil", "tx_hash": receipt["transactionHash"], "log_index": null, "to": to,
        "asset": "ETH", "amount": eth_text(milli), "block_number": hex_u64(&receipt["blockNumber"]),
        "block_hash": receipt["blockHash"] })
}

/// Posts one signed webhook delivery (to either replica).
async fn deliver(http: &Http, replica: usize, event: &Value) -> bool {
    let body = serde_json::to_vec(&json!({ "events": [event] })).unwrap_or_default();
    let timestamp = chrono::Utc::now().timestamp();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).expect("hmac");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&body);
    let signature = format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()));
    for attempt in 0..100 {
        let url = format!(
            "{}/v1/webhooks/alchemy",
            http.apis[(replica + attempt) % http.apis.len()]
        );
        let sent = http
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("Coffer-Signature", &signature)
            .body(body.clone())
            .send()
            .await;
        if sent.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A withdrawal signed with the user's device key, retried with the same key (fresh signature
/// each attempt); waits (bounded) until it is confirmed, mining blocks meanwhile.
async fn withdraw(stack: &Stack, http: &Http, user: &User, key: &str, milli: u128) -> Option<String> {
    let (device, destination) = (user.device.as_ref()?, user.destination.as_ref()?);
    let body =
        json!({ "wallet_id": user.wallet, "amount": eth_text(milli), "destination_address": destination });
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let call = Call::post("/v1/withdrawals", Some(&user.token), key, &body);
    let record = http
        .money("withdrawal", 0, call, || {
            device.sign("POST", "/v1/withdrawals", &bytes)
        })
        .await;
    let id = record.transaction()?.to_string();
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        stack.anvil.mine(1).await;
        let view = http.get(&format!("/v1/transactions/{id}"), &user.token).await;
        if view.is_ok_and(|v| v["state"] == "confirmed" || v["state"] == "failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Some(id)
}

/// Waits (bounded) until the deposit of `tx_hash` is credited; its block number.
async fn credited(stack: &Stack, wallet: &str, tx_hash: &str) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        stack.anvil.mine(1).await;
        let deposits = stack
            .store
            .chain_deposits_of_wallet(wallet, 500)
            .await
            .unwrap_or_default();
        if let Some(d) = deposits
            .iter()
            .find(|d| d.tx_hash == tx_hash && d.transaction_id.is_some())
        {
            if format!("{:?}", d.status).to_lowercase() == "credited" {
                return Some(d.block_number as u64);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    None
}

/// The chain workload until `deadline`, with the two re-orgs at seeded times.
pub async fn drive(
    stack: Arc<Stack>,
    http: Arc<Http>,
    users: Arc<Vec<User>>,
    seed: u64,
    deadline: Instant,
    findings: Arc<Mutex<Findings>>,
) -> ChainFigures {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc4a1);
    let mut figures = ChainFigures {
        hot_start_wei: wei_of(stack.anvil.balance(HOT_ADDRESS).await),
        ..Default::default()
    };
    let began = Instant::now();
    let total = deadline.saturating_duration_since(began);
    let (empty_reorg, credited_reorg) = (
        total.mul_f64(rng.gen_range(0.3..0.45)),
        total.mul_f64(rng.gen_range(0.7..0.85)),
    );
    let mut webhooks: Vec<Value> = Vec::new();
    let (mut reorged_empty, mut reorged_credited) = (false, false);
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        let depositor = &users[rng.gen_range(0..DEPOSITORS)];
        match rng.gen_range(0..10) {
            0..=3 => {
                let (from, milli) = (FUNDERS[rng.gen_range(0..FUNDERS.len())], rng.gen_range(10..500));
                let to = depositor.deposit_address.clone().unwrap_or_default();
                let receipt = deposit(&stack, from, &to, milli).await;
                figures.deposits += 1;
                if rng.gen_bool(0.5) {
                    webhooks.push(webhook_event(&receipt, &to, milli));
                }
            }
            4 | 5 if !webhooks.is_empty() => {
                // Out of order, each delivered twice (the second to the other replica).
                webhooks.shuffle(&mut rng);
                for event in webhooks.drain(..) {
                    let replica = rng.gen_range(0..2);
                    let both = futures::future::join(
                        deliver(&http, replica, &event),
                        deliver(&http, replica + 1, &event),
                    )
                    .await;
                    figures.webhooks += 2;
                    if !(both.0 && both.1) {
                        findings
                            .lock()
                            .expect("findings")
                            .violation(format!("a webhook delivery was never accepted: {event}"));
                    }
                }
            }
            6 => {
                let user = &users[rng.gen_range(0..WITHDRAWERS)];
                if let Some(id) = withdraw(&stack, &http, user, &format!("w-{n}"), rng.gen_range(1..20)).await
                {
                    figures.withdrawals.push(id);
                }
            }
            _ => stack.anvil.mine(1).await,
        }
        if !reorged_empty && began.elapsed() > empty_reorg {
            reorged_empty = true;
            stack.anvil.mine(3).await;
            tokio::time::sleep(Duration::from_millis(800)).await; // the listener sees them
            stack.anvil.reorg(2).await;
            figures.reorgs += 1;
            eprintln!("faults: anvil_reorg of 2 empty blocks");
        }
        if !reorged_credited && began.elapsed() > credited_reorg {
            reorged_credited = true;
            let to = depositor.deposit_address.clone().unwrap_or_default();
            let receipt = deposit(&stack, FUNDERS[0], &to, 250).await;
            let hash = receipt["transactionHash"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match credited(&stack, &depositor.wallet, &hash).await {
                Some(block) => {
                    let depth = stack.anvil.head().await - block + 1;
                    stack.anvil.reorg(depth).await;
                    figures.reorgs += 1;
                    figures.reorged_credited = Some(hash);
                    eprintln!("faults: anvil_reorg of {depth} blocks, removing a credited deposit");
                }
                None => findings
                    .lock()
                    .expect("findings")
                    .violation(format!("deposit {hash} was not credited within 30 s")),
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..400))).await;
    }
    for event in webhooks.drain(..) {
        deliver(&http, 0, &event).await;
        deliver(&http, 1, &event).await;
        figures.webhooks += 2;
    }
    // Confirm everything still confirming, and let the listener catch up.
    for _ in 0..6 {
        stack.anvil.mine(1).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    figures
}

/// No withdrawal signed twice (the hot wallet's nonce = signed withdrawals), on-chain outflow
/// = the ledger's settled withdrawals + gas, the re-orged credited deposit reversed, and every
/// deposit the chain still holds credited once.
pub async fn check(stack: &Stack, figures: &ChainFigures, findings: &mut Findings) {
    let transactions = stack
        .store
        .database()
        .collection::<coffer_store::TransactionDoc>("transactions");
    let withdrawals: Vec<coffer_store::TransactionDoc> =
        match transactions.find(doc! { "kind": "withdrawal" }).await {
            Ok(cursor) => cursor.try_collect().await.unwrap_or_default(),
            Err(e) => {
                findings.violation(format!("reading withdrawals: {e}"));
                return;
            }
        };
    let signed = withdrawals.iter().filter(|w| w.broadcast.is_some()).count() as u64;
    let nonce = hex_u64(
        &stack
            .anvil
            .call("eth_getTransactionCount", json!([HOT_ADDRESS, "latest"]))
            .await,
    );
    println!(
        "withdrawals: {} requested, {} stored, {signed} signed, hot wallet nonce {nonce}",
        figures.withdrawals.len(),
        withdrawals.len()
    );
    if nonce != signed {
        findings.violation(format!(
            "the hot wallet sent {nonce} transactions for {signed} signed withdrawals"
        ));
    }
    let (mut settled, mut gas) = (0u128, 0u128);
    for w in &withdrawals {
        let state = format!("{:?}", w.state).to_lowercase();
        if state != "confirmed" {
            findings.violation(format!("withdrawal {} ended {state}", w.id));
            continue;
        }
        settled += w.amount.to_string().parse::<u128>().unwrap_or(0);
        let Some(broadcast) = &w.broadcast else { continue };
        let receipt = stack.anvil.receipt_of(&broadcast.tx_hash).await;
        let paid = hex_u128(&receipt["gasUsed"]) * hex_u128(&receipt["effectiveGasPrice"]);
        gas += paid;
        let fee = broadcast
            .network_fee
            .as_ref()
            .map(|f| f.to_string().parse::<u128>().unwrap_or(0));
        if fee.is_some_and(|f| f != paid) {
            findings.violation(format!(
                "withdrawal {} records a fee of {fee:?}, the chain charged {paid}",
                w.id
            ));
        }
    }
    let hot_end = wei_of(stack.anvil.balance(HOT_ADDRESS).await);
    let outflow = figures.hot_start_wei.saturating_sub(hot_end);
    println!(
        "on-chain outflow {outflow} wei = settled {settled} + gas {gas}: {}",
        outflow == settled + gas
    );
    if outflow != settled + gas {
        findings.violation(format!(
            "on-chain outflow {outflow} wei != settled withdrawals {settled} + gas {gas}"
        ));
    }
    let deposits = stack.store.database().collection::<Document>("chain_deposits");
    let count = |filter: Document| {
        let deposits = deposits.clone();
        async move { deposits.count_documents(filter).await.unwrap_or(0) }
    };
    let recorded = count(doc! {}).await;
    println!(
        "chain deposits: {} sent, {recorded} recorded, {} webhook deliveries, {} re-orgs",
        figures.deposits + u64::from(figures.reorged_credited.is_some()),
        figures.webhooks,
        figures.reorgs
    );
    if let Some(hash) = &figures.reorged_credited {
        let reversed = count(doc! { "tx_hash": hash, "status": "reversed" }).await;
        if reversed != 1 {
            findings.violation(format!("the re-orged credited deposit {hash} was not reversed"));
        }
    }
    let duplicates = stack
        .store
        .database()
        .collection::<Document>("transactions")
        .aggregate(vec![
            doc! { "$match": { "kind": "deposit", "external_reference": { "$regex": "^0x" } } },
            doc! { "$group": { "_id": "$external_reference", "n": { "$sum": 1 } } },
            doc! { "$match": { "n": { "$gt": 1 } } },
        ])
        .await;
    match duplicates {
        Ok(cursor) => {
            let twice: Vec<Document> = cursor.try_collect().await.unwrap_or_default();
            if !twice.is_empty() {
                findings.violation(format!(
                    "{} chain deposit(s) credited more than once: {twice:?}",
                    twice.len()
                ));
            }
        }
        Err(e) => findings.violation(format!("reading chain deposits: {e}")),
    }
    findings.figure("chain deposits", figures.deposits);
    findings.figure("webhook deliveries", figures.webhooks);
    findings.figure("withdrawals", figures.withdrawals.len() as u64);
    findings.figure("re-orgs", figures.reorgs);
}
