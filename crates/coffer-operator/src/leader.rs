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
use k8s_openapi::jiff::{SignedDuration, Timestamp};
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

/// Pure decision from the Lease's spec, our identity and the time.
pub fn decide(spec: Option<&LeaseSpec>, holder: &str, now: Timestamp) -> Decision {
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
            let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into());
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0);
            match renewed {
                Some(at) if at + duration > now => Decision::Wait,
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

/// One attempt: true when we hold the Lease afterwards.
pub async fn try_acquire_or_renew(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
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
    let spec = match decide(lease.spec.as_ref(), &config.holder, now) {
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
    loop {
        match try_acquire_or_renew(&api, &config).await {
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
            match try_acquire_or_renew(&api, &config).await {
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

    #[test]
    fn a_missing_lease_is_acquired() {
        assert_eq!(
            decide(None, "a", Timestamp::now()),
            Decision::Acquire { transitions: 0 }
        );
    }

    #[test]
    fn a_live_lease_of_another_holder_is_left_alone_until_it_expires() {
        let lease = spec("b", "2026-01-01T00:00:00Z");
        assert_eq!(
            decide(Some(&lease), "a", "2026-01-01T00:00:14Z".parse().unwrap()),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&lease), "a", "2026-01-01T00:00:15Z".parse().unwrap()),
            Decision::Acquire { transitions: 4 }
        );
    }

    #[test]
    fn the_holder_renews_and_a_released_lease_is_free() {
        let lease = spec("a", "2026-01-01T00:00:00Z");
        assert_eq!(
            decide(Some(&lease), "a", "2026-01-01T01:00:00Z".parse().unwrap()),
            Decision::Renew
        );
        let released = LeaseSpec {
            holder_identity: None,
            ..lease
        };
        assert_eq!(
            decide(Some(&released), "b", "2026-01-01T00:00:01Z".parse().unwrap()),
            Decision::Acquire { transitions: 4 }
        );
    }
}
