//! WebSocket clients: each opens `GET /v1/stream` with a stream ticket on either replica,
//! disconnects now and then (and whenever a replica dies), and resumes from its last event id;
//! at the end each must have seen its user's events in order, without gaps.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::checks::Findings;
use crate::workload::{Http, User};

pub const CLIENTS: usize = 6;

/// What one client saw, in the order it saw it.
pub struct Seen {
    pub user: usize,
    pub ids: Vec<String>,
    pub connections: u64,
    /// Events seen again on a later connection (the documented client drops them by id: a
    /// resumed connection's history includes committed rows not yet published, which the live
    /// feed then brings too).
    pub duplicates: u64,
    /// The connection (1-based) each of `ids` arrived on, and each connection's `after`.
    pub connection_of: Vec<u64>,
    pub afters: Vec<Option<String>>,
}

async fn open(
    http: &Http,
    replica: usize,
    user: &User,
    after: Option<&str>,
) -> Option<coffer_test_support::stream::Socket> {
    let ticket = http
        .setup("/v1/stream/tickets", Some(&user.token), &serde_json::json!({}))
        .await
        .ok()?;
    let mut url = format!(
        "{}/v1/stream?ticket={}",
        http.apis[replica % http.apis.len()].replace("http://", "ws://"),
        ticket["ticket"].as_str()?
    );
    if let Some(after) = after {
        url.push_str(&format!("&after={after}"));
    }
    let request = url.into_client_request().ok()?;
    let connect = tokio_tungstenite::connect_async(request);
    let (socket, _) = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .ok()?
        .ok()?;
    Some(socket)
}

/// When a client stops disconnecting (`deadline`), when it may finish (`quiet`: nothing more
/// will be committed) and when it must (`settle`).
#[derive(Clone)]
pub struct Phases {
    pub deadline: Instant,
    pub settle: Instant,
    pub quiet: Arc<std::sync::atomic::AtomicBool>,
}

/// Client `c` follows user `c + 1` until `deadline`, then, once `quiet` (nothing more will be
/// committed), catches up until it has the user's last committed event (bounded by `settle`).
pub async fn client(
    c: usize,
    seed: u64,
    http: Arc<Http>,
    users: Arc<Vec<User>>,
    store: coffer_store::Store,
    phases: Phases,
) -> Seen {
    let Phases { deadline, settle, .. } = phases;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5173 ^ c as u64);
    let index = c + 1;
    let user = &users[index];
    let mut seen = Seen {
        user: index,
        ids: Vec::new(),
        connections: 0,
        duplicates: 0,
        connection_of: Vec::new(),
        afters: Vec::new(),
    };
    let mut known = HashSet::new();
    while Instant::now() < settle {
        let after = seen.ids.last().cloned();
        let Some(mut socket) = open(&http, rng.gen_range(0..2), user, after.as_deref()).await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        seen.connections += 1;
        seen.afters.push(after.clone());
        let until = Instant::now() + Duration::from_millis(rng.gen_range(1000..6000));
        loop {
            let now = Instant::now();
            if now >= settle || (now < deadline && now >= until) {
                break;
            }
            let wait = if now < deadline {
                until.min(settle) - now
            } else {
                Duration::from_secs(2)
            };
            match coffer_test_support::stream::next_event(&mut socket, wait).await {
                Some(event) => {
                    if let Some(id) = event["id"].as_str() {
                        if known.insert(id.to_string()) {
                            seen.ids.push(id.to_string());
                            seen.connection_of.push(seen.connections);
                        } else {
                            seen.duplicates += 1;
                        }
                    }
                }
                None if now >= deadline => {
                    // After the workload (the chain's last credits included) and the outbox's
                    // draining: done once the last committed event is here.
                    if !phases.quiet.load(std::sync::atomic::Ordering::SeqCst) {
                        break; // (a quiet socket or a closed one: reconnect either way)
                    }
                    let last = store
                        .stream_history(&user.id, "", 10_000)
                        .await
                        .ok()
                        .and_then(|r| r.last().map(|r| r.id.clone()));
                    if last.is_none() || last == seen.ids.last().cloned() {
                        return seen;
                    }
                    break;
                }
                None => break,
            }
        }
    }
    seen
}

/// Each client's events, per partition, are its user's committed events from the first it saw
/// through the last, in sequence order, each once.
pub async fn check(store: &coffer_store::Store, users: &[User], clients: &[Seen], findings: &mut Findings) {
    let rows = store.outbox_rows().await.unwrap_or_default();
    let mut total = 0;
    for seen in clients {
        let user = &users[seen.user];
        let mut expected: BTreeMap<i32, Vec<(i64, &str)>> = BTreeMap::new();
        let mut partition_of = std::collections::HashMap::new();
        for row in rows
            .iter()
            .filter(|r| r.user_id == user.id && r.dead_lettered_at.is_none())
        {
            expected
                .entry(row.partition)
                .or_default()
                .push((row.seq, row.id.as_str()));
            partition_of.insert(row.id.as_str(), row.partition);
        }
        let distinct: HashSet<&String> = seen.ids.iter().collect();
        if distinct.len() != seen.ids.len() {
            findings.violation(format!(
                "stream client of user {}: {} event(s) seen twice",
                seen.user,
                seen.ids.len() - distinct.len()
            ));
        }
        for (partition, rows) in expected.iter_mut() {
            rows.sort();
            let got: Vec<&str> = seen
                .ids
                .iter()
                .map(String::as_str)
                .filter(|id| partition_of.get(id) == Some(partition))
                .collect();
            let Some(first) = got.first() else { continue };
            let start = rows.iter().position(|(_, id)| id == first).unwrap_or(0);
            let want: Vec<&str> = rows[start..].iter().map(|(_, id)| *id).collect();
            if got != want {
                let missing: Vec<(i64, &str)> = rows[start..]
                    .iter()
                    .filter(|(_, id)| !got.contains(id))
                    .copied()
                    .collect();
                // Rows whose id sorts before an earlier-sequenced row's: a resume `after` an id
                // skips them.
                let inverted = rows.windows(2).filter(|w| w[1].1 < w[0].1).count();
                println!("  stream user {}: missing (seq, id) {missing:?}; {inverted} id inversion(s) in seq order", seen.user);
                for (seq, id) in &missing {
                    let before = rows.iter().rev().find(|(s, i)| s < seq && got.contains(i));
                    let after = rows.iter().find(|(s, i)| s > seq && got.contains(i));
                    let on = |id: &str| {
                        let at = seen.ids.iter().position(|x| x == id).unwrap_or(0);
                        let connection = seen.connection_of.get(at).copied().unwrap_or(0);
                        let resumed = seen.afters.get(connection as usize - 1).cloned().flatten();
                        format!("{id} on connection {connection} (after {resumed:?})")
                    };
                    println!(
                        "    missing {seq} {id}: previous seen {:?}, next seen {:?}",
                        before.map(|(_, i)| on(i)),
                        after.map(|(_, i)| on(i))
                    );
                }
                let missing = missing.len();
                findings.violation(format!(
                    "stream client of user {}: partition {partition}: saw {} event(s), expected {} in order from its first ({missing} missing)",
                    seen.user,
                    got.len(),
                    want.len()
                ));
            }
        }
        let foreign = seen
            .ids
            .iter()
            .filter(|id| !partition_of.contains_key(id.as_str()))
            .count();
        if foreign > 0 {
            findings.violation(format!(
                "stream client of user {}: {foreign} event(s) not its user's",
                seen.user
            ));
        }
        total += seen.ids.len() as u64;
        findings.figure("stream connections", seen.connections);
        findings.figure("stream duplicates dropped by id", seen.duplicates);
    }
    println!("stream: {} clients saw {total} events", clients.len());
    findings.figure("stream events seen", total);
}
