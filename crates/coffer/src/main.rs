//! `coffer`: one binary, one subcommand per role, plus the admin CLI.
#![forbid(unsafe_code)]

mod assets;
mod chain_role;
mod cli;
mod logging;
mod ops_server;
mod proof;
mod publisher;
mod reconciler;

use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use coffer_api::ApiContext;
use coffer_store::{Role, Store, StoreConfig, StoreMetrics};
use secrecy::{ExposeSecret, SecretString};

use cli::{ApiArgs, AuditCommand, Cli, Command, DbArgs, DevArgs, LedgerCommand, ProofCommand, UserCommand};
use coffer_tls::TlsRoots;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let roots = match TlsRoots::load(cli.tls_ca_file.as_deref()) {
        Ok(roots) => roots,
        Err(error) => {
            eprintln!("error: COFFER_TLS_CA_FILE: {error}");
            return ExitCode::from(2);
        }
    };
    let format = cli::LogFormat::resolve(
        cli.log_format,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    let telemetry = match logging::init(format, cli.command.role(), &roots) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match runtime.block_on(run(cli.command, roots)) {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "coffer stopped with an error");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    };
    // Tasks still running end (and close their spans) with the runtime; then flush the spans.
    drop(runtime);
    telemetry.shutdown();
    code
}

async fn run(command: Command, roots: TlsRoots) -> anyhow::Result<ExitCode> {
    match command {
        Command::Api(args) => serve_api(args, None, &roots).await.map(|()| ExitCode::SUCCESS),
        Command::Dev(DevArgs {
            api,
            eth_rpc_url,
            signer_key_file,
            replacement,
        }) => {
            let chain = DevChain {
                eth_rpc_url,
                signer_key_file,
                replacement,
            };
            serve_api(api, Some(chain), &roots)
                .await
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Operator(args) => coffer_operator::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Crdgen => {
            print!("{}", coffer_operator::crds_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => {
            println!("{}", coffer_api::openapi_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Reconciler(args) => reconciler::run(args, &roots, shutdown_signal())
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Audit {
            command: AuditCommand::Verify(args),
        } => reconciler::verify_audit(args).await,
        Command::OutboxPublisher(args) => publisher::run(args, &roots).await.map(|()| ExitCode::SUCCESS),
        Command::ChainListener(args) => chain_role::run(args, &roots).await.map(|()| ExitCode::SUCCESS),
        Command::Ledger {
            command: LedgerCommand::Verify(db),
        } => verify_ledger(db).await,
        Command::User {
            command: UserCommand::Create(args),
        } => create_user(args).await,
        Command::Proof {
            command: ProofCommand::Verify(args),
        } => proof::verify(&args),
        Command::User {
            command: UserCommand::EncryptPii(db),
        } => {
            let store = open_store(&db, &prometheus::Registry::new(), true).await?;
            let sealed = store.encrypt_users_in_clear().await?;
            store.ensure_indexes().await.context("creating indexes")?;
            println!("sealed the personal data of {sealed} user record(s)");
            Ok(ExitCode::SUCCESS)
        }
        Command::User {
            command: UserCommand::MfaEnroll(args),
        } => {
            let store = connect_users(&args.db, &prometheus::Registry::new()).await?;
            let user = store
                .user_by_email(&args.email)
                .await?
                .context("no account has this e-mail")?;
            if !coffer_api::mfa::required_for(user.role) {
                bail!("only staff accounts (support, finance, engineering, admin) use TOTP");
            }
            enroll_totp(&store, &user).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The store of a role that never reads or writes users (PII keys optional, checked if given).
pub(crate) async fn connect(db: &DbArgs, registry: &prometheus::Registry) -> anyhow::Result<Store> {
    ready(open_store(db, registry, false).await?).await
}

/// The store of a role that reads or writes users: refuses to start without the PII keys.
pub(crate) async fn connect_users(db: &DbArgs, registry: &prometheus::Registry) -> anyhow::Result<Store> {
    ready(open_store(db, registry, true).await?).await
}

async fn open_store(db: &DbArgs, registry: &prometheus::Registry, users: bool) -> anyhow::Result<Store> {
    let metrics = StoreMetrics::new(registry).context("registering store metrics")?;
    let config = StoreConfig {
        command_spans: logging::trace_database_commands(),
        batch: db.batch(),
        session_lease: db.session_lease(),
        audit_keys: Some(db.audit_keys()?),
        pii: db.pii_keys(users)?,
        ..StoreConfig::default()
    };
    Store::connect(&db.mongodb_uri, &db.database, config, metrics)
        .await
        .context("connecting to MongoDB (MONGODB_URI)")
}

/// Refuses a database with users in clear (their index could not be built), then ensures indexes.
async fn ready(store: Store) -> anyhow::Result<Store> {
    let in_clear = store.users_in_clear().await.context("reading the users")?;
    if in_clear > 0 {
        bail!(
            "{in_clear} user record(s) hold their e-mail in clear (written before PII encryption): run \
             `coffer user encrypt-pii` once with COFFER_PII_KEY and COFFER_PII_INDEX_KEY set (docs/security.md)"
        );
    }
    store.ensure_indexes().await.context("creating indexes")?;
    Ok(store)
}

/// What `coffer dev` runs beside the API.
struct DevChain {
    eth_rpc_url: Option<String>,
    signer_key_file: Option<std::path::PathBuf>,
    replacement: cli::ReplacementArgs,
}

async fn serve_api(args: ApiArgs, dev: Option<DevChain>, roots: &TlsRoots) -> anyhow::Result<()> {
    let role = if dev.is_some() { "dev" } else { "api" };
    let mut config = args.api_config(roots)?;
    let registry = prometheus::Registry::new();
    let catalog = assets::live_catalog(&args.assets, &registry).await?;
    if let Some(url) = dev.as_ref().and_then(|d| d.eth_rpc_url.as_deref()) {
        // Dev checks webhooks against the node its listeners follow, unless told otherwise.
        for asset in catalog.current().iter() {
            if !config.chain_rpcs.contains_key(&asset.chain) {
                let rpc = coffer_chain::rpc::Rpc::connect(url, roots)?;
                config.chain_rpcs.insert(asset.chain.clone(), rpc);
            }
        }
    }
    let store = connect_users(&args.db, &registry).await?;
    for asset in catalog.current().iter() {
        store
            .ensure_platform_accounts(&asset.symbol, asset.decimals)
            .await?;
    }
    let broker = publisher::endpoint(&args.amqp, roots);
    if let Some(dev) = &dev {
        publisher::spawn_beside_api(&store, &args.amqp, broker.clone(), &registry)?;
        chain_role::spawn_in_dev(
            dev.eth_rpc_url.as_deref(),
            dev.signer_key_file.as_deref(),
            dev.replacement.policy(),
            roots,
            &store,
            &catalog,
            &registry,
        )
        .await?;
    }
    // Each API replica consumes events with its own queue and fans them out to its sockets;
    // without a broker channel its WebSockets get nothing, so it is not ready.
    let consumer = coffer_events::publisher::Readiness::default();
    let health = coffer_api::store_health(&store)
        .flag("stream consumer", {
            let consumer = consumer.clone();
            move || consumer.is_ready()
        })
        .start();
    if let Some(listen) = &args.metrics_listen {
        ops_server::spawn(listen, health.clone(), registry.clone(), shutdown_signal()).await?;
    }
    let ctx = ApiContext::new(store, config, catalog, registry)?.with_health(health);
    tokio::spawn(coffer_events::consumer::run(
        broker,
        args.amqp.events_exchange.clone(),
        ctx.stream_hub().clone(),
        consumer,
    ));
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(role, listen = %listener.local_addr()?, "serving the API");
    if dev.is_some() {
        tracing::info!(
            "dev runs api, outbox-publisher and, when ETH_RPC_URL answers, a chain listener; reconciliations run on demand (POST /v1/admin/reconciliations)"
        );
    }
    coffer_api::serve(ctx, listener, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = interrupt => {},
        _ = terminate.recv() => {},
    }
    tracing::info!("shutdown requested; draining");
}

async fn verify_ledger(db: DbArgs) -> anyhow::Result<ExitCode> {
    let store = connect(&db, &prometheus::Registry::new()).await?;
    let report = store.verify_ledger().await?;
    println!("accounts checked: {}", report.accounts_checked);
    if report.findings.is_empty() {
        println!("ledger verified: every cached balance equals its ledger sum; every transaction and asset sums to zero");
        return Ok(ExitCode::SUCCESS);
    }
    for finding in &report.findings {
        println!("MISMATCH {finding:?}");
    }
    println!("{} finding(s)", report.findings.len());
    Ok(ExitCode::FAILURE)
}

/// Enrolls a new TOTP secret and prints its otpauth:// URI on standard output (never to the log,
/// which is standard error): the only time the secret leaves the database.
async fn enroll_totp(store: &Store, user: &coffer_store::UserDoc) -> anyhow::Result<()> {
    let secret = coffer_api::mfa::new_secret();
    let uri = coffer_api::mfa::provisioning_uri(&secret, &user.email).context("building the otpauth URI")?;
    store.set_totp_secret(&user.id, secret.expose_secret()).await?;
    let action = coffer_store::audit_chain::actions::STAFF_MFA_ENROLLED;
    store
        .audit("cli", action, &user.id, serde_json::json!({}))
        .await?;
    println!("TOTP enrolled: add this to the staff member's authenticator app (shown once):");
    println!("{uri}");
    Ok(())
}

async fn create_user(args: cli::UserCreateArgs) -> anyhow::Result<ExitCode> {
    let role = Role::from(args.role);
    // The keys before the password: a weak key is refused before anything is read or written.
    args.db.audit_keys()?;
    args.db.pii_keys(true)?;
    if !args.password_stdin {
        bail!("pass the password on standard input with --password-stdin (never as an argument)");
    }
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("reading the password from stdin")?;
    let password = SecretString::from(password.trim_end_matches(['\n', '\r']).to_string());
    if password.expose_secret().chars().count() < 12 {
        bail!("the password needs at least 12 characters");
    }
    if let Some(weakness) = cli::weakness(password.expose_secret(), 12) {
        bail!("the password is refused: {weakness}");
    }
    let store = connect_users(&args.db, &prometheus::Registry::new()).await?;
    let hash = coffer_api::auth::hash_password(password, Default::default())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let audit = coffer_store::audit::Audit::new("cli", coffer_store::audit_chain::actions::STAFF_CREATED)
        .with_details(serde_json::json!({ "role": role.as_str() }));
    match store.create_user(&args.email, hash, role, audit).await {
        Ok(user) => {
            println!("created {} account {}", role.as_str(), user.id);
            if coffer_api::mfa::required_for(role) {
                enroll_totp(&store, &user).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(coffer_store::StoreError::AlreadyExists) => {
            println!("exists: an account with this e-mail already exists; nothing changed");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.into()),
    }
}
