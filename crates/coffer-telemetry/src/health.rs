//! Readiness of a role from its dependencies, checked in the background so that `/readyz`
//! answers at once from the last results and never waits on a slow dependency itself.
//!
//! A kubelet probe has a short timeout (2 s in the operator's pods): a `/readyz` that pings the
//! database while the request waits turns a busy but healthy database into a failed probe, and
//! three of them take the pod out of its Service. Here each check runs every `interval` with its
//! own `budget`; a dependency is ready while its latest check answered within the budget.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type PingFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Ping = Arc<dyn Fn() -> PingFuture + Send + Sync>;

enum Kind {
    /// Asked over the network in the background (e.g. a database `ping`).
    Ping(Ping),
    /// A state another task keeps (e.g. "the stream consumer holds a broker channel").
    Flag(Arc<dyn Fn() -> bool + Send + Sync>),
}

struct Dependency {
    name: &'static str,
    kind: Kind,
    /// The latest completed check: Ok, or why not. None before the first one completed.
    latest: Mutex<Option<Result<(), String>>>,
}

/// The dependencies of a role and how they are checked. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    dependencies: Arc<Vec<Dependency>>,
    budget: Duration,
    interval: Duration,
    first_done: Arc<tokio::sync::Notify>,
}

/// What `/readyz` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Every dependency is ready.
    pub ready: bool,
    /// `(name, Ok | reason)` of each dependency, in the order they were added.
    pub checks: Vec<(&'static str, Result<(), String>)>,
}

impl Report {
    /// `name: ok` / `name: reason` lines, for a plain-text `/readyz` body.
    pub fn text(&self) -> String {
        let mut text = String::from(if self.ready { "ready\n" } else { "not ready\n" });
        for (name, result) in &self.checks {
            match result {
                Ok(()) => text.push_str(&format!("{name}: ok\n")),
                Err(reason) => text.push_str(&format!("{name}: {reason}\n")),
            }
        }
        text
    }

    /// The names of the dependencies that are not ready.
    pub fn failing(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(n, _)| *n)
            .collect()
    }
}

/// Default time a check may take before it counts as failed.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(5);
/// Default pause between two checks of a dependency.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// Builds a [`Health`]; [`HealthBuilder::start`] spawns the checks on the current runtime.
pub struct HealthBuilder {
    dependencies: Vec<Dependency>,
    budget: Duration,
    interval: Duration,
}

impl Health {
    pub fn builder() -> HealthBuilder {
        HealthBuilder {
            dependencies: Vec::new(),
            budget: DEFAULT_BUDGET,
            interval: DEFAULT_INTERVAL,
        }
    }

    /// The latest results. Before the first round of checks completed it waits for it, at most
    /// one budget: a freshly started pod answers with what it knows, not with a guess.
    pub async fn report(&self) -> Report {
        let pending = || {
            self.dependencies
                .iter()
                .any(|d| matches!(d.kind, Kind::Ping(_)) && d.latest.lock().unwrap().is_none())
        };
        if pending() {
            let notified = self.first_done.notified();
            if pending() {
                let _ = tokio::time::timeout(self.budget, notified).await;
            }
        }
        let checks: Vec<(&'static str, Result<(), String>)> = self
            .dependencies
            .iter()
            .map(|d| {
                let result = match &d.kind {
                    Kind::Flag(ready) if ready() => Ok(()),
                    Kind::Flag(_) => Err("not connected".to_string()),
                    Kind::Ping(_) => d
                        .latest
                        .lock()
                        .unwrap()
                        .clone()
                        .unwrap_or_else(|| Err("not checked yet".to_string())),
                };
                (d.name, result)
            })
            .collect();
        Report {
            ready: checks.iter().all(|(_, r)| r.is_ok()),
            checks,
        }
    }
}

impl HealthBuilder {
    /// A dependency asked with `ping` (bounded by the budget) every interval.
    pub fn ping<F, Fut>(mut self, name: &'static str, ping: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let ping: Ping = Arc::new(move || Box::pin(ping()) as PingFuture);
        self.dependencies.push(Dependency {
            name,
            kind: Kind::Ping(ping),
            latest: Mutex::new(None),
        });
        self
    }

    /// A dependency whose state another task keeps; read at each report.
    pub fn flag(mut self, name: &'static str, ready: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.dependencies.push(Dependency {
            name,
            kind: Kind::Flag(Arc::new(ready)),
            latest: Mutex::new(None),
        });
        self
    }

    /// How long a check may take (default 5 s) and how often it runs (default 2 s).
    pub fn timing(mut self, budget: Duration, interval: Duration) -> Self {
        self.budget = budget;
        self.interval = interval;
        self
    }

    /// Starts the background checks (they end when every clone of the [`Health`] is dropped).
    pub fn start(self) -> Health {
        let health = Health {
            dependencies: Arc::new(self.dependencies),
            budget: self.budget,
            interval: self.interval,
            first_done: Arc::new(tokio::sync::Notify::new()),
        };
        for index in 0..health.dependencies.len() {
            if matches!(health.dependencies[index].kind, Kind::Ping(_)) {
                tokio::spawn(check_forever(
                    Arc::downgrade(&health.dependencies),
                    index,
                    health.clone_timing(),
                ));
            }
        }
        health
    }
}

#[derive(Clone)]
struct Timing {
    budget: Duration,
    interval: Duration,
    first_done: Arc<tokio::sync::Notify>,
}

impl Health {
    fn clone_timing(&self) -> Timing {
        Timing {
            budget: self.budget,
            interval: self.interval,
            first_done: self.first_done.clone(),
        }
    }
}

async fn check_forever(dependencies: std::sync::Weak<Vec<Dependency>>, index: usize, timing: Timing) {
    loop {
        let Some(all) = dependencies.upgrade() else { return };
        let Kind::Ping(ping) = &all[index].kind else {
            return;
        };
        let ping = ping.clone();
        drop(all);
        let started = Instant::now();
        let result = match tokio::time::timeout(timing.budget, ping()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} ms", timing.budget.as_millis())),
        };
        let Some(all) = dependencies.upgrade() else { return };
        if let Err(reason) = &result {
            tracing::warn!(dependency = all[index].name, %reason, "readiness check failed");
        }
        *all[index].latest.lock().unwrap() = Some(result);
        drop(all);
        timing.first_done.notify_waiters();
        tokio::time::sleep(
            timing
                .interval
                .saturating_sub(started.elapsed().min(timing.interval)),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_slow_dependency_within_its_budget_is_ready_and_the_report_does_not_wait_for_it() {
        let delay_ms = Arc::new(AtomicU64::new(300));
        let delay = delay_ms.clone();
        let health = Health::builder()
            .ping("database", move || {
                let delay = Duration::from_millis(delay.load(Ordering::Relaxed));
                async move {
                    tokio::time::sleep(delay).await;
                    Ok(())
                }
            })
            .timing(Duration::from_millis(800), Duration::from_millis(50))
            .start();
        assert!(
            health.report().await.ready,
            "the first report waits for the first check"
        );
        for _ in 0..10 {
            let asked = Instant::now();
            let report = health.report().await;
            assert!(report.ready, "{report:?}");
            assert!(
                asked.elapsed() < Duration::from_millis(50),
                "answered from the last result"
            );
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        // Past its budget it is not ready, with the reason.
        delay_ms.store(2_000, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let report = health.report().await;
        assert!(!report.ready);
        assert_eq!(report.failing(), ["database"]);
        assert!(
            report.text().contains("no answer within 800 ms"),
            "{}",
            report.text()
        );
    }

    #[tokio::test]
    async fn a_flag_is_read_at_each_report() {
        let connected = Arc::new(AtomicBool::new(false));
        let flag = connected.clone();
        let health = Health::builder()
            .ping("database", || async { Ok(()) })
            .flag("stream consumer", move || flag.load(Ordering::Relaxed))
            .start();
        let report = health.report().await;
        assert_eq!(report.failing(), ["stream consumer"]);
        connected.store(true, Ordering::Relaxed);
        assert!(health.report().await.ready);
    }
}
