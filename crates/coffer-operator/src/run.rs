use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::build::{INSTANCE_LABEL, MANAGED_BY};
use crate::controller::{error_policy, reconcile, Context};
use crate::crd::{Asset, ChainListener, WalletPlatform};
use crate::leader::{run_as_leader, LeaseConfig};
use crate::metrics::Metrics;
use crate::server::{self, Health};

/// Configuration of the `coffer operator` role.
#[derive(clap::Args, Clone, Debug)]
pub struct OperatorArgs {
    /// Namespaces to reconcile (comma-separated in the environment); the client's default
    /// namespace (in a pod: its own) when none is given.
    #[arg(
        long = "namespaces",
        env = "COFFER_OPERATOR_NAMESPACES",
        value_delimiter = ',',
        conflicts_with = "all_namespaces"
    )]
    pub namespaces: Vec<String>,
    /// Reconcile every namespace (needs cluster-wide rights: only when asked for).
    #[arg(long, env = "COFFER_OPERATOR_ALL_NAMESPACES", default_value_t = false, action = clap::ArgAction::Set)]
    pub all_namespaces: bool,
    /// Address of the operator's /metrics, /healthz and /readyz.
    #[arg(long, env = "COFFER_OPERATOR_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,
    /// Elect one active replica with a Lease (turn off only when running a single replica locally).
    #[arg(long, env = "COFFER_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "COFFER_OPERATOR_LEASE_NAME", default_value = "coffer-operator")]
    pub lease_name: String,
    /// Namespace of the Lease; defaults to the pod's namespace (the client's default namespace).
    #[arg(long, env = "COFFER_OPERATOR_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease and in Events; defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    pub holder_identity: Option<String>,
    /// Seconds without renewal after which another replica may take the Lease.
    #[arg(long, env = "COFFER_OPERATOR_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds between two renewals by the leader (must be below the lease duration).
    #[arg(long, env = "COFFER_OPERATOR_LEASE_RENEW_SECONDS", default_value_t = 5)]
    pub lease_renew_seconds: u64,
}

/// Where the operator works: listed namespaces, or every namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Namespaces(Vec<String>),
    AllNamespaces,
}

impl Scope {
    /// One entry per controller: a namespace, or `None` for all of them.
    fn namespaces(&self) -> Vec<Option<&str>> {
        match self {
            Scope::Namespaces(list) => list.iter().map(|ns| Some(ns.as_str())).collect(),
            Scope::AllNamespaces => vec![None],
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Namespaces(list) => write!(f, "{}", list.join(",")),
            Scope::AllNamespaces => write!(f, "*"),
        }
    }
}

impl OperatorArgs {
    /// The scope asked for; `default_namespace` when neither a list nor all namespaces is given.
    pub fn scope(&self, default_namespace: &str) -> anyhow::Result<Scope> {
        if self.all_namespaces {
            return Ok(Scope::AllNamespaces);
        }
        let mut namespaces: Vec<String> = self
            .namespaces
            .iter()
            .map(|ns| ns.trim().to_string())
            .filter(|ns| !ns.is_empty())
            .collect();
        if namespaces.is_empty() {
            namespaces.push(default_namespace.to_string());
        }
        namespaces.sort();
        namespaces.dedup();
        if let Some(bad) = namespaces.iter().find(|ns| !is_dns_label(ns)) {
            anyhow::bail!("--namespaces: {bad:?} is not a namespace name (a DNS label)");
        }
        Ok(Scope::Namespaces(namespaces))
    }

    fn holder(&self) -> String {
        self.holder_identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "coffer-operator".into())
    }
}

/// Runs the operator until SIGTERM/SIGINT (or until leadership is lost, which is an error).
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.lease_renew_seconds > 0 && args.lease_renew_seconds < args.lease_duration_seconds,
        "--lease-renew-seconds must be positive and below --lease-duration-seconds"
    );
    let client = Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
    let scope = args.scope(client.default_namespace())?;
    let metrics = Arc::new(Metrics::default());
    let health = Health::default();
    server::spawn(args.listen, metrics.clone(), health.clone()).await?;
    info!(listen = %args.listen, namespaces = %scope, "coffer operator starting");

    for namespace in scope.namespaces() {
        let platforms: Api<WalletPlatform> = scoped(&client, namespace);
        platforms.list(&ListParams::default().limit(1)).await.with_context(|| {
            format!(
                "cannot list WalletPlatforms in {}: are the CRDs installed (kubectl apply -f crds/) and may the operator read them there?",
                namespace.unwrap_or("every namespace")
            )
        })?;
    }
    health.ready.store(true, Ordering::Relaxed);

    let holder = args.holder();
    let reporter = Reporter {
        controller: "coffer-operator".into(),
        instance: Some(holder.clone()),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client.clone(), reporter),
        metrics.clone(),
    ));
    // One controller per namespace: a namespaced list and watch is all the rights it needs.
    let controllers: Vec<_> = scope
        .namespaces()
        .into_iter()
        .map(|namespace| controller(client.clone(), namespace, ctx.clone()))
        .collect();
    let controller = futures::future::join_all(controllers).map(|_| ());

    if !args.leader_election {
        metrics.leader.set(1);
        controller.await;
        return Ok(());
    }
    let config = LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string()),
        holder,
        duration: Duration::from_secs(args.lease_duration_seconds),
        renew_every: Duration::from_secs(args.lease_renew_seconds),
    };
    let leader_gauge = metrics.leader.clone();
    let result = run_as_leader(client, config, move || leader_gauge.set(1), controller).await;
    metrics.leader.set(0);
    result
}

fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The platform that a managed object (labelled with its instance) belongs to.
fn platform_of_managed<K: ResourceExt>(object: K) -> Option<ObjectRef<WalletPlatform>> {
    let platform = object.labels().get(INSTANCE_LABEL)?;
    Some(ObjectRef::new(platform).within(&object.namespace()?))
}

/// Watches WalletPlatforms, the Assets and ChainListeners pointing at them, and the Deployments
/// and ConfigMaps the operator manages (so drift and rollouts are noticed).
pub(crate) fn controller(
    client: Client,
    namespace: Option<&str>,
    ctx: Arc<Context>,
) -> impl std::future::Future<Output = ()> {
    let managed = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    Controller::new(
        scoped::<WalletPlatform>(&client, namespace),
        watcher::Config::default(),
    )
    .watches(
        scoped::<Asset>(&client, namespace),
        watcher::Config::default(),
        |asset| Some(ObjectRef::new(&asset.spec.platform_ref).within(&asset.namespace()?)),
    )
    .watches(
        scoped::<ChainListener>(&client, namespace),
        watcher::Config::default(),
        |listener| Some(ObjectRef::new(&listener.spec.platform_ref).within(&listener.namespace()?)),
    )
    .watches(
        scoped::<Deployment>(&client, namespace),
        managed.clone(),
        platform_of_managed,
    )
    .watches(
        scoped::<ConfigMap>(&client, namespace),
        managed,
        platform_of_managed,
    )
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((platform, _)) => tracing::debug!(platform = %platform, "reconciled"),
            Err(error) => warn!(%error, "reconcile failed"),
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{OperatorArgs, Scope};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        operator: OperatorArgs,
    }

    #[test]
    fn defaults_watch_the_own_namespace_only_with_leader_election_on_port_9090() {
        let args = Cli::try_parse_from(["coffer"]).unwrap().operator;
        assert_eq!(
            args.scope("coffer-system").unwrap(),
            Scope::Namespaces(vec!["coffer-system".into()])
        );
        assert!(args.leader_election);
        assert_eq!(args.listen.to_string(), "0.0.0.0:9090");
        assert_eq!(
            (
                args.lease_name.as_str(),
                args.lease_duration_seconds,
                args.lease_renew_seconds
            ),
            ("coffer-operator", 15, 5)
        );
    }

    #[test]
    fn leader_election_can_be_turned_off_for_a_single_local_replica() {
        let cli = Cli::try_parse_from([
            "coffer",
            "--leader-election",
            "false",
            "--namespaces",
            "coffer-dev",
        ])
        .unwrap();
        assert!(!cli.operator.leader_election);
        assert_eq!(
            cli.operator.scope("default").unwrap(),
            Scope::Namespaces(vec!["coffer-dev".into()])
        );
    }

    #[test]
    fn a_list_of_namespaces_or_every_namespace_only_when_asked() {
        let list = Cli::try_parse_from(["coffer", "--namespaces", "payments,wallet-b,payments"]).unwrap();
        assert_eq!(
            list.operator.scope("default").unwrap(),
            Scope::Namespaces(vec!["payments".into(), "wallet-b".into()])
        );
        let all = Cli::try_parse_from(["coffer", "--all-namespaces", "true"]).unwrap();
        assert_eq!(all.operator.scope("default").unwrap(), Scope::AllNamespaces);
        assert!(Cli::try_parse_from(["coffer", "--all-namespaces", "true", "--namespaces", "a"]).is_err());
        let bad = Cli::try_parse_from(["coffer", "--namespaces", "Payments"]).unwrap();
        assert!(bad.operator.scope("default").is_err());
    }
}
