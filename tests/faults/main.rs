//! `coffer-faults --seed N --duration S`: the fault harness (docs/faults.md). Starts the system as
//! it runs (SecantusDB, a private RabbitMQ node, anvil, two `coffer api`, two publishers, the
//! chain listener with its broadcaster, the reconciler), drives a seeded workload while a seeded
//! schedule kills processes, restarts the broker and re-orgs the chain, then checks the books,
//! the answers, the events and the chain. Exit 0 only with no violation. Loopback only.

mod chain;
mod checks;
mod stream;
mod system;
mod workload;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use coffer_test_support::process::Roles;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use checks::Findings;
use system::{port_in, Rabbit, Supervisor};

/// What setup, draining and checks may take beyond `--duration` before the run is killed.
const MARGIN: Duration = Duration::from_secs(200);
const JWT_SECRET: &str = "faults-harness-secret-0123456789abcdef";
const PAYMENT_PASSWORD: &str = "faults harness payment password";
pub const WEBHOOK_SECRET: &str = "whsec-faults-0123456789abcdef";
/// anvil's second well-known account: the hot wallet (a public test key).
const HOT_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
pub const HOT_ADDRESS: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";

struct Args {
    seed: u64,
    duration: Duration,
    coffer: std::path::PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut seed = env("COFFER_FAULTS_SEED");
    let mut duration = env("COFFER_FAULTS_DURATION");
    let mut coffer = env("COFFER_BIN");
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let value = argv.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seed" => seed = Some(value),
            "--duration" => duration = Some(value),
            "--coffer" => coffer = Some(value),
            other => anyhow::bail!("unknown flag {other} (--seed N, --duration SECONDS, --coffer PATH)"),
        }
    }
    let seed = match seed {
        Some(s) => s.parse().context("--seed: an integer")?,
        None => rand::random::<u32>() as u64,
    };
    let seconds: u64 = duration
        .map_or(Ok(60), |d| d.parse())
        .context("--duration: seconds")?;
    anyhow::ensure!((20..=3600).contains(&seconds), "--duration: 20 to 3600 seconds");
    // Beside this binary by default (target/<profile>/coffer).
    let coffer = coffer.map_or_else(
        || std::env::current_exe().expect("exe").with_file_name("coffer"),
        std::path::PathBuf::from,
    );
    anyhow::ensure!(
        coffer.exists(),
        "{} not found: build it (cargo build -p coffer) or pass --coffer",
        coffer.display()
    );
    Ok(Args {
        seed,
        duration: Duration::from_secs(seconds),
        coffer,
    })
}

fn main() -> ExitCode {
    let args = match args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("coffer-faults: {e:#}");
            return ExitCode::from(2);
        }
    };
    let limit = args.duration + MARGIN;
    let seed = args.seed;
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("coffer-faults: seed {seed}: the hard deadline ({limit:?}) passed; killing every process");
        system::kill_everything();
        std::process::exit(3);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let result = runtime.block_on(run(&args));
    let elapsed = started.elapsed().as_secs();
    match result {
        Ok(findings) if findings.violations.is_empty() => {
            println!("\ncoffer-faults: seed {seed}: PASSED in {elapsed} s; violations: 0");
            ExitCode::SUCCESS
        }
        Ok(findings) => {
            println!(
                "\ncoffer-faults: seed {seed}: FAILED in {elapsed} s; violations: {}",
                findings.violations.len()
            );
            for v in &findings.violations {
                println!("  - {v}");
            }
            println!(
                "replay: coffer-faults --seed {seed} --duration {}",
                args.duration.as_secs()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("\ncoffer-faults: seed {seed}: the run itself failed after {elapsed} s: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The system under test.
pub struct Stack {
    pub supervisor: Arc<Supervisor>,
    pub rabbit: Rabbit,
    pub anvil: coffer_test_support::chain::Anvil,
    pub store: coffer_store::Store,
    pub apis: Vec<String>,
    pub dir: std::path::PathBuf,
    pub start_block: u64,
    _secantus: system::Owned,
}

fn assets_file(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let assets = json!({ "version": 1, "assets": [{
        "symbol": "ETH", "chain": "anvil", "decimals": 18, "contract": null,
        "confirmations_required": 2, "deposits_enabled": true, "withdrawals_enabled": true,
        "withdrawal_min": "0.001", "withdrawal_max": "50", "daily_withdrawal_limit": "1000",
        "review_threshold": "10" }] });
    let path = dir.join("assets.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&assets)?)?;
    Ok(path)
}

async fn start(args: &Args, dir: &std::path::Path) -> anyhow::Result<Stack> {
    let ports = Mutex::new(Vec::new());
    let mongo_port = port_in(27600..27700, &ports);
    let rabbit_port = port_in(5690..5700, &ports);
    let began = Instant::now();
    let (secantus, rabbit) = tokio::join!(
        system::start_secantus(mongo_port, dir),
        Rabbit::start(rabbit_port, dir)
    );
    let (secantus, rabbit) = (secantus?, rabbit?);
    let anvil = coffer_test_support::chain::Anvil::start_in(8950..9000).await;
    system::track(anvil.pid());
    anvil.mine(8).await;
    let start_block = anvil.head().await + 1;
    println!(
        "started SecantusDB :{mongo_port}, RabbitMQ node {} :{rabbit_port}, anvil {} in {} s",
        rabbit.node,
        anvil.url,
        began.elapsed().as_secs()
    );
    let uri = format!("mongodb://127.0.0.1:{mongo_port}/?directConnection=true");
    let database = "faults";
    let metrics = coffer_store::StoreMetrics::new(&prometheus::Registry::new())?;
    let config = coffer_store::StoreConfig {
        audit_keys: Some(coffer_test_support::test_audit_keys()),
        pii: Some(coffer_test_support::test_pii_keys()),
        ..Default::default()
    };
    let store = coffer_store::Store::connect(&uri, database, config, metrics).await?;
    store.ensure_indexes().await?;
    let key_file = dir.join("hot.key");
    std::fs::write(&key_file, format!("{HOT_KEY}\n"))?;
    let exchange = "coffer.faults";
    let mut common = vec![
        ("MONGODB_URI".to_string(), uri.clone()),
        ("COFFER_DATABASE".into(), database.into()),
        (
            "COFFER_ASSETS_FILE".into(),
            assets_file(dir)?.display().to_string(),
        ),
        ("AMQP_URI".into(), rabbit.uri()),
        ("COFFER_EVENTS_EXCHANGE".into(), exchange.into()),
        // Every role that writes audit records keys them; the harness's users are verified.
        (
            "COFFER_AUDIT_KEY".into(),
            coffer_test_support::TEST_AUDIT_KEY.into(),
        ),
        ("COFFER_KYC_DEFAULT_TIER".into(), "full".into()),
    ];
    // The roles that read users seal their personal data (the others ignore the keys).
    common.extend(coffer_test_support::test_pii_env());
    let roles = Roles::new(&args.coffer, &format!("faults-{}", args.seed), common);
    let created = coffer_test_support::process::create_payment_account(
        &roles,
        "payments@coffer.test",
        PAYMENT_PASSWORD,
    );
    anyhow::ensure!(created, "coffer user create (the payment account) failed");
    let supervisor = Supervisor::new(roles);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut apis = Vec::new();
    let xpub = coffer_chain::hd::account_xpub_of_mnemonic(coffer_test_support::chain::DEPOSIT_MNEMONIC)?;
    for n in 1..=2 {
        let port = port_in(8950..9000, &ports);
        let mut env = api_env(port, &xpub, &anvil.url);
        env.push((
            "COFFER_METRICS_LISTEN".into(),
            format!("127.0.0.1:{}", port_in(8950..9000, &ports)),
        ));
        // api-1 dies inside a group-commit transaction (written, not committed).
        let faults = if n == 1 {
            vec![format!("ledger.before_commit={}", rng.gen_range(20..60))]
        } else {
            vec![]
        };
        supervisor.add(&format!("api-{n}"), &["api"], env, faults);
        apis.push(format!("http://127.0.0.1:{port}"));
    }
    for n in 1..=2 {
        let env = vec![
            (
                "COFFER_LISTEN".to_string(),
                format!("127.0.0.1:{}", port_in(8950..9000, &ports)),
            ),
            ("COFFER_OUTBOX_LEASE_SECONDS".into(), "10".into()),
        ];
        // publisher-1 dies between the broker's confirm and the cursor's move.
        let faults = if n == 1 {
            vec![format!("relay.after_confirm={}", rng.gen_range(10..40))]
        } else {
            vec![]
        };
        supervisor.add(&format!("publisher-{n}"), &["outbox-publisher"], env, faults);
    }
    let env = vec![
        (
            "COFFER_LISTEN".to_string(),
            format!("127.0.0.1:{}", port_in(8950..9000, &ports)),
        ),
        ("ETH_RPC_URL".into(), anvil.url.clone()),
        ("COFFER_POLL_INTERVAL_MS".into(), "300".into()),
        ("COFFER_START_BLOCK".into(), start_block.to_string()),
        ("COFFER_SIGNER_KEY_FILE".into(), key_file.display().to_string()),
    ];
    // The listener dies mid-poll (a block scanned, its checkpoint not saved); the restarted
    // process's broadcaster dies after signing its first withdrawal (stored, not sent); the next
    // dies in the credited deposit's re-org (reversed, the rolled-back cursor not saved).
    let faults = vec![
        format!("listener.mid_poll={}", rng.gen_range(4..12)),
        "broadcaster.after_sign=1".to_string(),
        "listener.mid_unwind=1".to_string(),
    ];
    supervisor.add(
        "chain-listener",
        &["chain-listener", "--chain", "anvil"],
        env,
        faults,
    );
    let env = vec![
        (
            "COFFER_LISTEN".to_string(),
            format!("127.0.0.1:{}", port_in(8950..9000, &ports)),
        ),
        ("COFFER_RECONCILE_INTERVAL_SECONDS".into(), "10".into()),
    ];
    supervisor.add("reconciler", &["reconciler"], env, vec![]);
    Ok(Stack {
        supervisor,
        rabbit,
        anvil,
        store,
        apis,
        dir: dir.to_path_buf(),
        start_block,
        _secantus: secantus,
    })
}

fn api_env(port: u16, xpub: &str, anvil: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("COFFER_LISTEN", format!("127.0.0.1:{port}")),
        ("COFFER_JWT_SECRET", JWT_SECRET.into()),
        ("COFFER_DEPOSIT_XPUB", xpub.into()),
        ("COFFER_WEBHOOK_SECRET_ALCHEMY", WEBHOOK_SECRET.into()),
        ("COFFER_CHAIN_RPC_URLS", format!("anvil={anvil}")),
        ("COFFER_DEVICE_TRUST_DELAY_SECONDS", "0".into()),
        ("COFFER_ADDRESS_COOLING_OFF_SECONDS", "0".into()),
        ("COFFER_WITHDRAWAL_REAUTH_SECONDS", "86400".into()),
        ("COFFER_ACCESS_TOKEN_TTL_SECONDS", "3600".into()),
        ("COFFER_PLATFORM_ADDRESSES", HOT_ADDRESS.into()),
        ("COFFER_PASSWORD_HASHING_CONCURRENT_MAX", "8".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for limit in [
        "AUTH_PER_IP",
        "MONEY_PER_USER",
        "MONEY_PER_IP",
        "READS_PER_USER",
        "READS_PER_IP",
    ] {
        env.push((format!("COFFER_RATE_{limit}_PER_MINUTE"), "1000000".into()));
    }
    env
}

/// The fault schedule: SIGKILLs of the roles no fault point kills, and two broker restarts,
/// at seeded times within the workload.
async fn faults(stack: Arc<Stack>, seed: u64, duration: Duration, findings: Arc<Mutex<Findings>>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xfa17);
    let at = |rng: &mut StdRng, low: f64, high: f64| duration.mul_f64(rng.gen_range(low..high));
    let mut plan = vec![
        (at(&mut rng, 0.15, 0.3), "rabbitmq"),
        (at(&mut rng, 0.3, 0.45), "reconciler"),
        (at(&mut rng, 0.45, 0.6), "api-2"),
        (at(&mut rng, 0.5, 0.65), "publisher-2"),
        (at(&mut rng, 0.6, 0.75), "rabbitmq"),
    ];
    plan.sort();
    let began = Instant::now();
    for (when, what) in plan {
        tokio::time::sleep(when.saturating_sub(began.elapsed())).await;
        if what == "rabbitmq" {
            eprintln!("faults: RabbitMQ stop_app / start_app");
            let restarted = stack.rabbit.restart(Duration::from_secs(3)).await;
            let mut findings = findings.lock().expect("findings");
            match restarted {
                Ok(()) => findings.figure("broker restarts", 1),
                Err(e) => findings.violation(format!("the broker restart failed: {e:#}")),
            }
        } else {
            let supervisor = stack.supervisor.clone();
            let name = what.to_string();
            let _ = tokio::task::spawn_blocking(move || supervisor.kill(&name)).await;
        }
    }
}

async fn payment_token(http: &workload::Http) -> anyhow::Result<String> {
    let login = json!({ "email": "payments@coffer.test", "password": PAYMENT_PASSWORD });
    let session = http.setup("/v1/auth/login", None, &login).await?;
    Ok(session["access_token"].as_str().unwrap_or_default().to_string())
}

async fn run(args: &Args) -> anyhow::Result<Findings> {
    let run_id = format!("{}-{}", args.seed, std::process::id());
    let dir = std::env::temp_dir().join(format!("coffer-faults-{run_id}"));
    std::fs::create_dir_all(&dir)?;
    println!(
        "coffer-faults: seed {} duration {} s, logs in {}",
        args.seed,
        args.duration.as_secs(),
        dir.display()
    );
    let stack = Arc::new(start(args, &dir).await?);
    let events = chain::EventQueue::declare(&stack.rabbit.uri(), "coffer.faults").await?;
    let http = workload::Http::new(stack.apis.clone());
    for api in &stack.apis {
        coffer_test_support::process::wait_ready(&http.client, &format!("{api}/readyz")).await;
    }
    let watch = system::spawn_watch(stack.supervisor.clone());
    let payment = payment_token(&http).await?;
    let setup = Instant::now();
    let mut users = workload::users(&http, &run_id).await?;
    workload::fund(&http, &payment, &users, &run_id).await;
    chain::prepare(&http, &mut users).await?;
    println!(
        "{} users registered and funded in {} s",
        users.len(),
        setup.elapsed().as_secs()
    );

    let findings = Arc::new(Mutex::new(Findings::default()));
    let users = Arc::new(users);
    let deadline = Instant::now() + args.duration;
    let clients: Vec<_> = (0..workload::CLIENTS)
        .map(|c| {
            tokio::spawn(workload::transfer_client(
                c,
                args.seed,
                http.clone(),
                users.clone(),
                deadline,
            ))
        })
        .collect();
    let settle = deadline + Duration::from_secs(120);
    let quiet = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streams: Vec<_> = (0..stream::CLIENTS)
        .map(|c| {
            let (http, users, store) = (http.clone(), users.clone(), stack.store.clone());
            let phases = stream::Phases {
                deadline,
                settle,
                quiet: quiet.clone(),
            };
            tokio::spawn(stream::client(c, args.seed, http, users, store, phases))
        })
        .collect();
    let schedule = tokio::spawn(faults(stack.clone(), args.seed, args.duration, findings.clone()));
    let chain_driver = tokio::spawn(chain::drive(
        stack.clone(),
        http.clone(),
        users.clone(),
        args.seed,
        deadline,
        findings.clone(),
    ));
    for client in clients {
        client.await?;
    }
    schedule.await?;
    let chain_figures = chain_driver.await?;
    println!("workload done; checking");

    // Draining: every role up again, the outbox published.
    let drained = checks::outbox_drained(&stack.store, Duration::from_secs(90)).await;
    quiet.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut findings = Arc::try_unwrap(findings)
        .map_err(|_| anyhow::anyhow!("findings shared"))?
        .into_inner()
        .expect("findings");
    if !drained {
        findings.violation("the outbox was not drained within 90 s of the workload's end".into());
    }
    let mut seen = Vec::new();
    for client in streams {
        seen.push(client.await?);
    }
    let records = http.records.lock().expect("records").clone();
    checks::ledger(&stack.store, &users, &mut findings).await;
    checks::answers(&stack.store, &records, &mut findings).await;
    events.check(&stack.store, &mut findings).await;
    stream::check(&stack.store, &users, &seen, &mut findings).await;
    chain::check(&stack, &chain_figures, &mut findings).await;
    checks::reconciler(&stack.store, &mut findings).await;
    watch.abort();
    report(&stack, &http, &records, &mut findings);
    stack.supervisor.stop_all();
    Ok(findings)
}

fn report(stack: &Stack, http: &workload::Http, records: &[workload::Record], findings: &mut Findings) {
    let happenings = stack.supervisor.happenings.lock().expect("happenings").clone();
    for (process, point) in &happenings.at_fault_points {
        println!("fault: {process} killed at fault point {point}");
    }
    for process in &happenings.killed {
        println!("fault: {process} SIGKILLed by the harness");
    }
    for point in [
        "ledger.before_commit",
        "relay.after_confirm",
        "listener.mid_poll",
        "broadcaster.after_sign",
        "listener.mid_unwind",
    ] {
        if !happenings.at_fault_points.iter().any(|(_, p)| p == point) {
            findings.violation(format!("fault point {point} was never reached"));
        }
    }
    for exit in &happenings.unexpected {
        findings.violation(format!("a process exited on its own: {exit}"));
    }
    for error in http.server_errors.lock().expect("errors").iter().take(20) {
        println!("  server error (retried): {error}");
    }
    let retried = records.iter().filter(|r| r.attempts > 1).count() as u64;
    findings.figure("money requests", records.len() as u64);
    findings.figure("money requests retried", retried);
    findings.figure(
        "process kills",
        (happenings.at_fault_points.len() + happenings.killed.len()) as u64,
    );
    findings.figure(
        "5xx answers retried",
        http.server_errors.lock().expect("errors").len() as u64,
    );
    println!(
        "\nreport (process logs in {}, servers' in {}):",
        stack.supervisor.roles().dir.display(),
        stack.dir.display()
    );
    for (name, generations) in stack.supervisor.generations() {
        println!("  {name}: {} start(s)", generations + 1);
    }
    for (name, value) in &findings.figures {
        println!("  {name}: {value}");
    }
    println!("  violations: {}", findings.violations.len());
}
