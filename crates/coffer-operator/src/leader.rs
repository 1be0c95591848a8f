//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go does it: the holder renews
//! `renewTime` every few seconds; anyone may take the Lease once it has not been renewed for
//! `leaseDurationSeconds`. Optimistic concurrency (resourceVersion) settles races. A leader that
//! cannot renew in time stops (the pod restarts and stands by), so two leaders never overlap for
//! longer than one renew interval.

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tracing::{info, warn};

/// Which Lease, who we are, and the timings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub holder: String,
    pub duration: Duration,
    pub renew_every: Duration,
}

/// What to do with a Lease as observed now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Take it (free, expired, or never held): bump `leaseTransitions` to this value.
    Acquire { transitions: i32 },
    /// We hold it: renew.
    Renew,
    /// Someone else holds a live Lease.
    Wait,
}

/// What this replica last saw of another holder's Lease, and when (its own monotonic clock).
///
/// As client-go's `observedRecord` / `observedTime`: the Lease's `renewTime` was written by the
/// holder's clock, so it is never compared with ours; it only tells whether the record changed.
/// A holder is taken over once its record has not changed for a lease duration *as this replica
/// measured it*, so clocks that disagree between nodes cannot make a live leader look expired.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    record: Option<Record>,
    at: Option<std::time::Instant>,
}

/// The fields that change whenever the holder renews or the Lease changes hands.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    acquire_time: Option<Timestamp>,
    transitions: Option<i32>,
    duration_seconds: Option<i32>,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Record {
        Record {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions,
            duration_seconds: spec.lease_duration_seconds,
        }
    }
}

/// Pure decision from the Lease's spec, our identity, what we observed before and our clock.
pub fn decide(
    spec: Option<&LeaseSpec>,
    holder: &str,
    observed: &mut Observed,
    now: std::time::Instant,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire { transitions: 0 };
    };
    let transitions = spec.lease_transitions.unwrap_or(0);
    match spec.holder_identity.as_deref() {
        Some(current) if current == holder => Decision::Renew,
        None | Some("") => Decision::Acquire {
            transitions: transitions + 1,
        },
        Some(_) => {
            let record = Record::of(spec);
            if observed.record.as_ref() != Some(&record) {
                // A new record (a renewal, a new holder, or our first look): the holder's lease
                // runs for a full duration from now, on our clock.
                observed.record = Some(record);
                observed.at = Some(now);
                return Decision::Wait;
            }
            let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
            match observed.at {
                Some(at) if now.saturating_duration_since(at) < duration => Decision::Wait,
                _ => Decision::Acquire {
                    transitions: transitions + 1,
                },
            }
        }
    }
}

fn lease_spec(
    config: &LeaseConfig,
    acquire_time: Option<MicroTime>,
    transitions: i32,
    now: Timestamp,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(config.holder.clone()),
        lease_duration_seconds: Some(i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: acquire_time.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_conflict() || status.is_already_exists())
}

/// One attempt: true when we hold the Lease afterwards. `observed` carries what this replica saw
/// of the Lease from one attempt to the next.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Observed,
) -> Result<bool, kube::Error> {
    // Written into the Lease for people and other tools; never compared with another node's.
    let now = Timestamp::now();
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(lease_spec(config, None, 0, now)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(error) if is_conflict(&error) => Ok(false),
            Err(error) => Err(error),
        };
    };
    let spec = match decide(
        lease.spec.as_ref(),
        &config.holder,
        observed,
        std::time::Instant::now(),
    ) {
        Decision::Wait => return Ok(false),
        Decision::Renew => {
            let current = lease.spec.clone().unwrap_or_default();
            lease_spec(
                config,
                current.acquire_time,
                current.lease_transitions.unwrap_or(0),
                now,
            )
        }
        Decision::Acquire { transitions } => lease_spec(config, None, transitions, now),
    };
    lease.spec = Some(spec);
    // `lease` keeps the resourceVersion we read: a concurrent writer makes this a 409.
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(error) if is_conflict(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Gives the Lease up (best effort) so a standby takes over without waiting for expiry.
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else { return };
    if spec.holder_identity.as_deref() != Some(config.holder.as_str()) {
        return;
    }
    spec.holder_identity = None;
    if let Err(error) = api.replace(&config.name, &PostParams::default(), &lease).await {
        warn!(%error, "could not release the leader Lease");
    }
}

/// Waits for the Lease, then runs `work` while renewing it. Returns when `work` ends (the Lease is
/// released) or with an error when leadership is lost.
pub async fn run_as_leader<F>(
    client: Client,
    config: LeaseConfig,
    on_elected: impl FnOnce(),
    work: F,
) -> anyhow::Result<()>
where
    F: Future<Output = ()>,
{
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    info!(lease = %config.name, namespace = %config.namespace, holder = %config.holder, "waiting for leadership");
    let mut observed = Observed::default();
    loop {
        match try_acquire_or_renew(&api, &config, &mut observed).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => warn!(%error, "leader election attempt failed"),
        }
        tokio::time::sleep(config.renew_every).await;
    }
    info!(holder = %config.holder, "elected leader");
    on_elected();
    let renew = async {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(config.renew_every).await;
            match try_acquire_or_renew(&api, &config, &mut observed).await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => bail!("another replica took the leader Lease {}", config.name),
                Err(error) => warn!(%error, "could not renew the leader Lease"),
            }
            if last_renewed.elapsed() >= config.duration {
                bail!(
                    "could not renew the leader Lease {} for {:?}",
                    config.name,
                    config.duration
                );
            }
        }
    };
    tokio::select! {
        () = work => {
            release(&api, &config).await;
            Ok(())
        }
        lost = renew => lost.context("leadership lost; stopping so that only one operator acts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    use std::time::Instant;

    #[test]
    fn a_missing_lease_is_acquired() {
        assert_eq!(
            decide(None, "a", &mut Observed::default(), Instant::now()),
            Decision::Acquire { transitions: 0 }
        );
    }

    #[test]
    fn a_live_lease_of_another_holder_is_left_alone_until_it_is_not_renewed_for_a_duration() {
        let lease = spec("b", "2026-01-01T00:00:00Z");
        let (mut observed, start) = (Observed::default(), Instant::now());
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        assert_eq!(decide(Some(&lease), "a", &mut observed, at(0)), Decision::Wait);
        assert_eq!(decide(Some(&lease), "a", &mut observed, at(14)), Decision::Wait);
        assert_eq!(
            decide(Some(&lease), "a", &mut observed, at(15)),
            Decision::Acquire { transitions: 4 }
        );
    }

    #[test]
    fn clock_skew_between_nodes_cannot_make_a_renewing_leader_look_expired() {
        // The leader's clock is an hour behind ours: every renewTime it writes is an hour "old".
        // Compared with our clock, the Lease would look expired at once, and we would become a
        // second leader. Timed from when we observed each renewal, it never expires.
        let (mut observed, start) = (Observed::default(), Instant::now());
        for renewal in 0..20u64 {
            let renewed_at = format!("2026-01-01T00:00:{:02}Z", renewal * 2 % 60);
            let lease = spec("b", &renewed_at);
            let ours = start + Duration::from_secs(renewal * 5);
            assert_eq!(
                decide(Some(&lease), "a", &mut observed, ours),
                Decision::Wait,
                "renewal {renewal} observed at +{}s",
                renewal * 5
            );
        }
        // A leader whose clock runs ahead (renewTime in our future) stops renewing: taken over one
        // lease duration after we last saw its record change, not when its timestamp says.
        let mut observed = Observed::default();
        let ahead = spec("c", "2099-01-01T00:00:00Z");
        assert_eq!(decide(Some(&ahead), "a", &mut observed, start), Decision::Wait);
        assert_eq!(
            decide(Some(&ahead), "a", &mut observed, start + Duration::from_secs(15)),
            Decision::Acquire { transitions: 4 }
        );
    }

    #[test]
    fn the_holder_renews_and_a_released_lease_is_free() {
        let lease = spec("a", "2026-01-01T00:00:00Z");
        let mut observed = Observed::default();
        assert_eq!(
            decide(Some(&lease), "a", &mut observed, Instant::now()),
            Decision::Renew
        );
        let released = LeaseSpec {
            holder_identity: None,
            ..lease
        };
        assert_eq!(
            decide(Some(&released), "b", &mut observed, Instant::now()),
            Decision::Acquire { transitions: 4 }
        );
    }
}
