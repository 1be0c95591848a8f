//! Reconciliation (O1): prove the books, store what was found, never fix anything.
//!
//! A run checks, each in the database (aggregations and indexed queries, never every entry in
//! memory): cached balances against ledger sums (`balances`), transactions and assets summing to
//! zero (`postings`), custody against the chain (`custody`, skipped without a chain source),
//! transactions past their state's time limit (`stuck_transactions`), the age of the oldest
//! unpublished outbox event (`outbox_lag`), the audit hash chain (`audit_chain`), and each
//! asset's reserves on chain against its latest published liabilities (`solvency`, skipped
//! without a chain source or a statement). The run, its findings and its reserves − liabilities
//! per asset are stored in `reconciliation_runs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use coffer_domain::liabilities::Solvency;
use coffer_domain::{Amount, TxState};
use futures::future::BoxFuture;
use futures::TryStreamExt;
use mongodb::bson::{doc, DateTime, Document};
use prometheus::{Gauge, GaugeVec, IntCounter, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};

use crate::collections::{OUTBOX, RECONCILIATION_RUNS, TRANSACTIONS, WALLETS};
use crate::liabilities::StatementDoc;
use crate::model::{TransactionDoc, WalletDoc};
use crate::verify::Finding;
use crate::{new_id, Store, StoreError};

/// The checks of a run, in order. Also the values of the `check` metric label.
pub const CHECKS: [&str; 7] = [
    "balances",
    "postings",
    "custody",
    "solvency",
    "stuck_transactions",
    "outbox_lag",
    "audit_chain",
];

/// The most findings one run stores; counts per check stay exact beyond it.
pub const FINDINGS_STORED_MAX: usize = 1000;
/// The most stuck transactions reported per state in one run.
const STUCK_PER_STATE_MAX: i64 = 100;

/// Limits of a run, validated at start.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// How long a transaction may stay in a state before it is reported as stuck.
    pub state_limits: Vec<(TxState, Duration)>,
    /// How old the oldest unpublished outbox event may be.
    pub outbox_limit: Duration,
    /// How often a run is a full pass over every ledger entry; the runs between are incremental
    /// (from each account's checkpoint on). Zero: every run is full.
    pub full_interval: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        ReconcileConfig {
            state_limits: vec![
                (TxState::Created, minutes(15)),
                (TxState::PendingBroadcast, minutes(15)),
                (TxState::Broadcasted, minutes(60)),
                (TxState::Confirming, minutes(120)),
                (TxState::Retryable, minutes(60)),
                (TxState::ManualReview, minutes(72 * 60)),
            ],
            outbox_limit: minutes(5),
            full_interval: minutes(24 * 60),
        }
    }
}

impl ReconcileConfig {
    /// Overrides state limits from `state=seconds,state=seconds`, e.g. `confirming=3600`.
    pub fn with_state_limits(mut self, text: &str) -> Result<Self, String> {
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, seconds) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not state=seconds"))?;
            let state = TxState::ALL
                .into_iter()
                .find(|s| s.as_str() == name.trim())
                .ok_or_else(|| format!("unknown state {name:?}"))?;
            if state.is_final() {
                return Err(format!("{name} is final: nothing stays stuck there"));
            }
            let seconds: u64 = seconds
                .trim()
                .parse()
                .map_err(|_| format!("{pair:?}: seconds must be a whole number"))?;
            if seconds == 0 {
                return Err(format!("{pair:?}: the limit must be at least 1 second"));
            }
            self.state_limits.retain(|(s, _)| *s != state);
            self.state_limits.push((state, Duration::from_secs(seconds)));
        }
        Ok(self)
    }
}

/// What the chain holds of an asset, as the ledger's custody account should show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainReading {
    /// The platform's holdings at `block_number` (hot wallets and deposit addresses), corrected
    /// for what is in flight between the chain and the ledger at that block: deposits still
    /// confirming are subtracted, withdrawals mined but not settled are added back.
    pub custody: Amount,
    /// The holdings as read, before that correction.
    pub on_chain: Amount,
    /// The block read (`None` for a source without blocks).
    pub block_number: Option<u64>,
}

/// Where the custody check learns what the platform holds on chain (`coffer_chain::custody` reads
/// a node); without one the check is reported as skipped.
pub trait CustodySource: Send + Sync {
    /// `asset`'s reading; `Ok(None)` when no chain is configured for the asset.
    fn on_chain_balance<'a>(&'a self, asset: &'a str) -> BoxFuture<'a, Result<Option<ChainReading>, String>>;
}

/// No chain configured: every custody check is skipped.
pub struct NoChainConfigured;

impl CustodySource for NoChainConfigured {
    fn on_chain_balance<'a>(
        &'a self,
        _asset: &'a str,
    ) -> BoxFuture<'a, Result<Option<ChainReading>, String>> {
        Box::pin(async { Ok(None) })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    Mismatch,
    Skipped,
    Error,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckOutcome {
    pub check: String,
    pub status: CheckStatus,
    /// Findings of this check (exact, even when not all are stored).
    pub mismatches: i64,
    pub detail: Option<String>,
    pub duration_ms: i64,
}

/// One thing a check found. Amounts are signed integers of smallest units, as strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindingDoc {
    pub check: String,
    /// e.g. `balance_mismatch`, `unbalanced_transaction`, `stuck`, `outbox_lag`, `chain_edited`.
    pub kind: String,
    /// The id of what is wrong: an account, transaction, asset, event or audit record.
    pub subject: String,
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReconciliationRun {
    #[serde(rename = "_id")]
    pub id: String,
    /// `interval` (the reconciler role) or `api` (on demand).
    pub trigger: String,
    /// `full` (every ledger entry) or `incremental` (from the accounts' checkpoints on); runs
    /// stored before incremental runs existed were full.
    #[serde(default = "full_mode")]
    pub mode: RunMode,
    /// What an incremental run read (absent on full runs).
    #[serde(default)]
    pub incremental: Option<IncrementalSummary>,
    pub requested_by: Option<String>,
    #[serde(with = "crate::codec::time")]
    pub started_at: crate::codec::Time,
    #[serde(with = "crate::codec::time")]
    pub finished_at: crate::codec::Time,
    pub duration_ms: i64,
    pub checks: Vec<CheckOutcome>,
    /// Total findings over all checks.
    pub mismatches: i64,
    /// Empty in listings (not loaded); see [`Store::reconciliation_run`].
    #[serde(default)]
    pub findings: Vec<FindingDoc>,
    pub findings_truncated: bool,
    /// Reserves − liabilities of each asset compared (absent in runs stored before the check).
    #[serde(default)]
    pub solvency: Vec<SolvencyLine>,
}

/// Which ledger pass a run makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    /// Every ledger entry, summed in the database; rewrites every agreeing account's checkpoint.
    Full,
    /// Only entries after each account's checkpoint (crate::checkpoints).
    Incremental,
}

fn full_mode() -> RunMode {
    RunMode::Full
}

/// What the run asks for: [`RunMode`] by the schedule (`None`), or one of them.
pub type ModeRequest = Option<RunMode>;

/// How much an incremental run read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncrementalSummary {
    pub accounts_read: i64,
    pub accounts_changed: i64,
    pub entries_read: i64,
    pub transactions_checked: i64,
}

impl From<crate::checkpoints::IncrementalStats> for IncrementalSummary {
    fn from(s: crate::checkpoints::IncrementalStats) -> Self {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        IncrementalSummary {
            accounts_read: n(s.accounts_read),
            accounts_changed: n(s.accounts_changed),
            entries_read: n(s.entries_read),
            transactions_checked: n(s.transactions_checked),
        }
    }
}

/// One asset's reserves read from the chain against its latest published liabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolvencyLine {
    pub asset: String,
    pub decimals: u8,
    /// What the platform's addresses hold at `block_number`, in smallest units.
    pub reserves_atomic: String,
    /// The signed total of statement `statement_id` (snapshot at `snapshot_at`).
    pub liabilities_atomic: String,
    /// `reserves − liabilities`, signed: negative when the platform is short.
    pub margin_atomic: String,
    pub statement_id: String,
    #[serde(with = "crate::codec::time")]
    pub snapshot_at: crate::codec::Time,
    pub block_number: Option<i64>,
}

/// Metrics of reconciliation and of the audit chain, registered into the role's registry.
#[derive(Clone)]
pub struct ReconcileMetrics {
    pub runs: IntCounter,
    pub mismatches: IntGaugeVec,
    pub last_run_timestamp: Gauge,
    /// Without labels; exposed only once a verification ran in this process (a 0 before any
    /// verification would read as "broken"). Set it through [`ReconcileMetrics::audit_chain_verified`].
    pub audit_chain_valid: IntGaugeVec,
    /// Reserves − liabilities by asset, in whole units (approximate; the run stores it exactly).
    pub solvency_margin: GaugeVec,
}

impl ReconcileMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = ReconcileMetrics {
            runs: IntCounter::with_opts(Opts::new(
                "coffer_reconciliation_runs_total",
                "Reconciliation runs completed and stored.",
            ))?,
            mismatches: IntGaugeVec::new(
                Opts::new(
                    "coffer_reconciliation_mismatches",
                    "Findings of the last reconciliation run, by check.",
                ),
                &["check"],
            )?,
            last_run_timestamp: Gauge::with_opts(Opts::new(
                "coffer_reconciliation_last_run_timestamp_seconds",
                "Unix time the last reconciliation run finished.",
            ))?,
            audit_chain_valid: IntGaugeVec::new(
                Opts::new(
                    "coffer_audit_chain_valid",
                    "1 when the last verification of the audit hash chain found it intact, 0 when broken (absent before the first).",
                ),
                &[],
            )?,
            solvency_margin: GaugeVec::new(
                Opts::new(
                    "coffer_reserves_minus_liabilities",
                    "Reserves on chain minus the latest published liabilities, by asset, in whole units (negative: short).",
                ),
                &["asset"],
            )?,
        };
        registry.register(Box::new(metrics.runs.clone()))?;
        registry.register(Box::new(metrics.mismatches.clone()))?;
        registry.register(Box::new(metrics.last_run_timestamp.clone()))?;
        registry.register(Box::new(metrics.audit_chain_valid.clone()))?;
        registry.register(Box::new(metrics.solvency_margin.clone()))?;
        Ok(metrics)
    }

    /// Records the result of an audit-chain verification.
    pub fn audit_chain_verified(&self, valid: bool) {
        self.audit_chain_valid
            .with_label_values::<&str>(&[])
            .set(i64::from(valid));
    }

    fn record(&self, run: &ReconciliationRun) {
        self.runs.inc();
        for outcome in &run.checks {
            self.mismatches
                .with_label_values(&[&outcome.check])
                .set(outcome.mismatches);
        }
        self.last_run_timestamp
            .set(run.finished_at.timestamp_millis() as f64 / 1000.0);
        for line in &run.solvency {
            let whole = whole_units(&line.margin_atomic, line.decimals);
            self.solvency_margin.with_label_values(&[&line.asset]).set(whole);
        }
    }
}

/// What a reconciliation needs besides the store.
#[derive(Clone)]
pub struct Reconciler {
    pub config: ReconcileConfig,
    pub custody: Arc<dyn CustodySource>,
    pub metrics: ReconcileMetrics,
}

/// Findings of one check, before it is timed and stored.
struct Checked {
    status: CheckStatus,
    findings: Vec<FindingDoc>,
    /// Findings counted beyond those listed (e.g. more stuck transactions than reported).
    uncounted: i64,
    detail: Option<String>,
}

impl Checked {
    fn of(findings: Vec<FindingDoc>) -> Self {
        let status = if findings.is_empty() {
            CheckStatus::Ok
        } else {
            CheckStatus::Mismatch
        };
        Checked {
            status,
            findings,
            uncounted: 0,
            detail: None,
        }
    }
}

fn finding(check: &str, kind: &str, subject: &str, details: Document) -> FindingDoc {
    let details = mongodb::bson::Bson::Document(details).into_relaxed_extjson();
    FindingDoc {
        check: check.into(),
        kind: kind.into(),
        subject: subject.into(),
        details,
    }
}

fn ledger_findings(findings: Vec<Finding>) -> (Vec<FindingDoc>, Vec<FindingDoc>) {
    let (mut balances, mut postings) = (Vec::new(), Vec::new());
    for f in findings {
        match f {
            Finding::BalanceMismatch {
                account_id,
                bucket,
                cached,
                ledger,
            } => balances.push(finding(
                "balances",
                "balance_mismatch",
                &account_id,
                doc! { "bucket": bucket, "cached_atomic": cached, "ledger_atomic": ledger },
            )),
            Finding::UnknownAccount { account_id } => {
                balances.push(finding("balances", "unknown_account", &account_id, doc! {}))
            }
            Finding::SequenceGap { account_id, detail } => balances.push(finding(
                "balances",
                "sequence_gap",
                &account_id,
                doc! { "detail": detail },
            )),
            Finding::UnbalancedTransaction { transaction_id, sum } => postings.push(finding(
                "postings",
                "unbalanced_transaction",
                &transaction_id,
                doc! { "sum_atomic": sum },
            )),
            Finding::UnbalancedAsset { asset, sum } => postings.push(finding(
                "postings",
                "unbalanced_asset",
                &asset,
                doc! { "sum_atomic": sum },
            )),
        }
    }
    (balances, postings)
}

/// A signed integer of smallest units as whole units, for a gauge (precision beyond f64 is lost).
fn whole_units(atomic: &str, decimals: u8) -> f64 {
    let value: f64 = atomic.parse().unwrap_or(f64::NAN);
    value / 10f64.powi(i32::from(decimals))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Reconciler {
    /// Runs every check (a full or an incremental ledger pass, by the schedule), stores the run
    /// and updates the metrics.
    pub async fn run(
        &self,
        store: &Store,
        trigger: &str,
        requested_by: Option<&str>,
    ) -> Result<ReconciliationRun, StoreError> {
        self.run_as(store, trigger, requested_by, None).await
    }

    /// The ledger pass a run makes: full when asked, when no account has a checkpoint yet, or
    /// when the last full run is older than `full_interval`; else what was asked or incremental.
    pub async fn mode_for(&self, store: &Store, requested: ModeRequest) -> Result<RunMode, StoreError> {
        if requested == Some(RunMode::Full)
            || self.config.full_interval.is_zero()
            || !store.has_reconcile_checkpoints().await?
        {
            return Ok(RunMode::Full);
        }
        if requested == Some(RunMode::Incremental) {
            return Ok(RunMode::Incremental);
        }
        let last_full = store
            .collection::<ReconciliationRun>(RECONCILIATION_RUNS)
            .find_one(doc! { "mode": { "$ne": "incremental" } })
            .projection(doc! { "findings": 0 })
            .sort(doc! { "_id": -1 })
            .await?;
        let due = last_full.is_none_or(|run| {
            let age_ms = DateTime::now().timestamp_millis() - run.started_at.timestamp_millis();
            age_ms >= millis(self.config.full_interval)
        });
        Ok(if due { RunMode::Full } else { RunMode::Incremental })
    }

    /// [`Reconciler::run`] with the ledger pass asked for (`None`: by the schedule).
    pub async fn run_as(
        &self,
        store: &Store,
        trigger: &str,
        requested_by: Option<&str>,
        requested: ModeRequest,
    ) -> Result<ReconciliationRun, StoreError> {
        let mode = self.mode_for(store, requested).await?;
        let started_at = crate::codec::now();
        let started = Instant::now();
        let mut outcomes = Vec::new();
        let mut findings = Vec::new();
        let mut push = |check: &str, elapsed: Duration, checked: Checked| {
            outcomes.push(CheckOutcome {
                check: check.to_string(),
                status: checked.status,
                mismatches: checked.findings.len() as i64 + checked.uncounted,
                detail: checked.detail,
                duration_ms: millis(elapsed),
            });
            findings.extend(checked.findings);
        };

        let t = Instant::now();
        let (report, incremental) = match mode {
            RunMode::Full => (store.verify_ledger_and_checkpoint().await?, None),
            RunMode::Incremental => {
                let (report, stats) = store.verify_ledger_incremental().await?;
                (report, Some(IncrementalSummary::from(stats)))
            }
        };
        let (balances, postings) = ledger_findings(report.findings);
        let elapsed = t.elapsed();
        push("balances", elapsed, Checked::of(balances));
        push("postings", elapsed, Checked::of(postings));

        let t = Instant::now();
        let (custody, readings) = self.check_custody(store).await?;
        push("custody", t.elapsed(), custody);
        let t = Instant::now();
        let (solvency, solvency_lines) = check_solvency(store, &readings).await?;
        push("solvency", t.elapsed(), solvency);
        let t = Instant::now();
        let stuck = self.check_stuck(store).await?;
        push("stuck_transactions", t.elapsed(), stuck);
        let t = Instant::now();
        let outbox = self.check_outbox(store).await?;
        push("outbox_lag", t.elapsed(), outbox);
        let t = Instant::now();
        let audit = self.check_audit(store).await?;
        push("audit_chain", t.elapsed(), audit);

        let mismatches = outcomes.iter().map(|o| o.mismatches).sum();
        let findings_truncated = findings.len() > FINDINGS_STORED_MAX;
        findings.truncate(FINDINGS_STORED_MAX);
        let run = ReconciliationRun {
            id: new_id(),
            trigger: trigger.to_string(),
            mode,
            incremental,
            requested_by: requested_by.map(str::to_string),
            started_at,
            finished_at: crate::codec::now(),
            duration_ms: millis(started.elapsed()),
            checks: outcomes,
            mismatches,
            findings,
            findings_truncated,
            solvency: solvency_lines,
        };
        store
            .collection::<ReconciliationRun>(RECONCILIATION_RUNS)
            .insert_one(&run)
            .await?;
        self.metrics.record(&run);
        Ok(run)
    }

    /// Custody is debit-normal: the ledger holds `-(available + pending + held)` of the account.
    /// Also answers each asset's chain reading, which the solvency check compares with liabilities.
    async fn check_custody(
        &self,
        store: &Store,
    ) -> Result<(Checked, BTreeMap<String, ChainReading>), StoreError> {
        let mut cursor = store
            .collection::<WalletDoc>(WALLETS)
            .find(doc! { "kind": "custody" })
            .limit(10_000)
            .await?;
        let (mut compared, mut errors, mut found) = (0, Vec::new(), Vec::new());
        let mut readings = BTreeMap::new();
        while let Some(account) = cursor.try_next().await? {
            let reading = match self.custody.on_chain_balance(&account.asset).await {
                Ok(Some(reading)) => {
                    readings.insert(account.asset.clone(), reading);
                    reading
                }
                Ok(None) => continue,
                Err(e) => {
                    errors.push(format!("{}: {e}", account.asset));
                    continue;
                }
            };
            compared += 1;
            let mut held = Amount::ZERO;
            let mut owed = Amount::ZERO;
            for bucket in coffer_domain::Bucket::ALL {
                let value = account.bucket(bucket);
                let (amount, negative) = (value.magnitude, value.negative);
                let side = if negative { &mut held } else { &mut owed };
                *side = side.checked_add(amount).expect("bounded by the ledger limit");
            }
            let in_ledger = held.checked_sub(owed);
            let on_chain = reading.custody;
            if in_ledger != Some(on_chain) {
                let ledger_atomic = match in_ledger {
                    Some(amount) => amount.to_string(),
                    None => format!("-{}", owed.checked_sub(held).expect("owed > held")),
                };
                found.push(finding(
                    "custody",
                    "custody_mismatch",
                    &account.asset,
                    doc! {
                        "account_id": &account.id,
                        "ledger_atomic": ledger_atomic,
                        "on_chain_atomic": on_chain.to_string(),
                        "read_atomic": reading.on_chain.to_string(),
                        "block_number": reading.block_number.map(|b| b as i64),
                    },
                ));
            }
        }
        let mut checked = Checked::of(found);
        if !errors.is_empty() {
            checked.status = CheckStatus::Error;
            checked.detail = Some(errors.join("; ").chars().take(500).collect());
        } else if compared == 0 {
            checked.status = CheckStatus::Skipped;
            checked.detail = Some("no chain configured".into());
        }
        Ok((checked, readings))
    }

    async fn check_stuck(&self, store: &Store) -> Result<Checked, StoreError> {
        let transactions = store.collection::<TransactionDoc>(TRANSACTIONS);
        let now = DateTime::now().timestamp_millis();
        let (mut found, mut uncounted) = (Vec::new(), 0);
        for (state, limit) in &self.config.state_limits {
            let since = DateTime::from_millis(now - millis(*limit));
            let filter = doc! { "state": state.as_str(), "updated_at": { "$lt": since } };
            let total = transactions.count_documents(filter.clone()).await? as i64;
            if total == 0 {
                continue;
            }
            let mut cursor = transactions
                .find(filter)
                .sort(doc! { "updated_at": 1 })
                .limit(STUCK_PER_STATE_MAX)
                .await?;
            let mut listed = 0;
            while let Some(tx) = cursor.try_next().await? {
                listed += 1;
                let age_seconds = (now - tx.updated_at.timestamp_millis()) / 1000;
                found.push(finding(
                    "stuck_transactions",
                    "stuck",
                    &tx.id,
                    doc! { "kind": tx.kind.as_str(), "state": state.as_str(), "in_state_seconds": age_seconds,
                    "limit_seconds": limit.as_secs() as i64 },
                ));
            }
            uncounted += total - listed;
        }
        let mut checked = Checked::of(found);
        checked.uncounted = uncounted;
        if uncounted > 0 {
            checked.status = CheckStatus::Mismatch;
        }
        Ok(checked)
    }

    async fn check_outbox(&self, store: &Store) -> Result<Checked, StoreError> {
        let Some(oldest) = store.outbox_oldest_pending().await? else {
            return Ok(Checked::of(Vec::new()));
        };
        let age = DateTime::now().timestamp_millis() - oldest.created_at.timestamp_millis();
        if age <= millis(self.config.outbox_limit) {
            return Ok(Checked::of(Vec::new()));
        }
        Ok(Checked::of(vec![finding(
            "outbox_lag",
            "outbox_lag",
            &oldest.id,
            doc! { "event_type": &oldest.event_type, "age_seconds": age / 1000,
            "limit_seconds": self.config.outbox_limit.as_secs() as i64 },
        )]))
    }

    async fn check_audit(&self, store: &Store) -> Result<Checked, StoreError> {
        let verification = store.verify_audit(None).await?;
        self.metrics.audit_chain_verified(verification.valid());
        let found = verification
            .first_break
            .map(|b| {
                finding(
                    "audit_chain",
                    &format!("chain_{}", b.kind.as_str()),
                    &format!("{}:{}", b.shard, b.seq),
                    doc! { "shard": b.shard, "seq": b.seq, "record_id": b.id, "detail": b.detail },
                )
            })
            .into_iter()
            .collect();
        Ok(Checked::of(found))
    }
}

/// Each asset read from the chain against its latest statement: a `reserves_short` finding where
/// reserves are below the published liabilities, and the margin of every asset compared.
async fn check_solvency(
    store: &Store,
    readings: &BTreeMap<String, ChainReading>,
) -> Result<(Checked, Vec<SolvencyLine>), StoreError> {
    let (mut lines, mut found, mut unpublished) = (Vec::new(), Vec::new(), Vec::new());
    for (asset, reading) in readings {
        let Some(statement) = store.latest_liability_statement(asset).await? else {
            unpublished.push(asset.as_str());
            continue;
        };
        let line = solvency_line(&statement, reading)?;
        if line.margin_atomic.starts_with('-') {
            found.push(finding(
                "solvency",
                "reserves_short",
                asset,
                doc! { "reserves_atomic": &line.reserves_atomic, "liabilities_atomic": &line.liabilities_atomic,
                "margin_atomic": &line.margin_atomic, "statement_id": &line.statement_id,
                "block_number": line.block_number },
            ));
        }
        lines.push(line);
    }
    let mut checked = Checked::of(found);
    if !unpublished.is_empty() {
        checked.detail = Some(format!("no liabilities published for {}", unpublished.join(", ")));
    }
    if lines.is_empty() {
        checked.status = CheckStatus::Skipped;
        checked.detail.get_or_insert_with(|| "no chain configured".into());
    }
    Ok((checked, lines))
}

fn solvency_line(statement: &StatementDoc, reading: &ChainReading) -> Result<SolvencyLine, StoreError> {
    let liabilities = Amount::parse_atomic(&statement.total_atomic)
        .map_err(|_| StoreError::Corrupt(format!("statement {}: total", statement.id)))?;
    let solvency = Solvency {
        reserves: reading.on_chain,
        liabilities,
    };
    Ok(SolvencyLine {
        asset: statement.asset.clone(),
        decimals: statement.decimals,
        reserves_atomic: reading.on_chain.to_string(),
        liabilities_atomic: liabilities.to_string(),
        margin_atomic: solvency.margin_atomic(),
        statement_id: statement.id.clone(),
        snapshot_at: statement.snapshot_at,
        block_number: reading.block_number.map(|b| b as i64),
    })
}

impl Store {
    pub async fn reconciliation_run(&self, id: &str) -> Result<Option<ReconciliationRun>, StoreError> {
        Ok(self
            .collection::<ReconciliationRun>(RECONCILIATION_RUNS)
            .find_one(doc! { "_id": id })
            .await?)
    }

    /// Runs newest first, without their findings; at most `limit` (1..=100), before `cursor`.
    pub async fn reconciliation_runs(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<crate::queries::Page<ReconciliationRun>, StoreError> {
        let limit = limit.clamp(1, crate::queries::PAGE_LIMIT_MAX);
        let filter = match cursor {
            Some(cursor) => doc! { "_id": { "$lt": cursor } },
            None => doc! {},
        };
        let mut items: Vec<ReconciliationRun> = self
            .collection::<ReconciliationRun>(RECONCILIATION_RUNS)
            .find(filter)
            .projection(doc! { "findings": 0 })
            .sort(doc! { "_id": -1 })
            .limit(i64::from(limit) + 1)
            .await?
            .try_collect()
            .await?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok(crate::queries::Page { items, next_cursor })
    }

    /// Indexes of the admin collections and queries (called by [`Store::ensure_indexes`]).
    pub(crate) async fn ensure_admin_indexes(&self) -> Result<(), StoreError> {
        use crate::collections::{ADJUSTMENTS, RAIL_DEPOSITS};
        let specs = [
            (TRANSACTIONS, doc! { "state": 1, "updated_at": 1 }, "stuck"),
            (
                OUTBOX,
                doc! { "data.transaction_id": 1, "_id": -1 },
                "by_transaction",
            ),
            (ADJUSTMENTS, doc! { "status": 1, "_id": -1 }, "by_status"),
            (
                RAIL_DEPOSITS,
                doc! { "status": 1, "reported_at": 1, "_id": 1 },
                "by_status",
            ),
        ];
        for (collection, keys, name) in specs {
            let options = mongodb::options::IndexOptions::builder()
                .name(name.to_string())
                .build();
            let model = mongodb::IndexModel::builder().keys(keys).options(options).build();
            store_index(self, collection, model).await?;
        }
        Ok(())
    }
}

async fn store_index(store: &Store, collection: &str, model: mongodb::IndexModel) -> Result<(), StoreError> {
    store
        .collection::<Document>(collection)
        .create_index(model)
        .await?;
    Ok(())
}
