use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, EmptyDirVolumeSource, EnvVar, PersistentVolumeClaimVolumeSource, Service, ServiceAccount,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject};
use kube::ResourceExt;

use super::pod::{common_env, env, pod_template, secret_env, Workload};
use super::{
    assets_config_map, assets_config_map_name, deployment_name, labels, metrics_service_name, owned_meta,
    selector_labels, service_account_name, AssetSelection, Component, API_PORT, METRICS_LABEL, METRICS_PORT,
};
use crate::crd::{ChainListener, WalletPlatform};

/// Longest platform name: every derived name (`<name>-outbox-publisher`, Service names) must
/// stay a valid DNS label of at most 63 characters.
pub const PLATFORM_NAME_MAX: usize = 40;

/// Every object a WalletPlatform becomes (its ChainListeners are built separately).
#[derive(Clone, Debug)]
pub struct PlatformObjects {
    pub assets: ConfigMap,
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub deployments: Vec<Deployment>,
    pub api_service: Service,
    pub metrics_service: Service,
    pub api_autoscaler: Option<HorizontalPodAutoscaler>,
    pub api_disruption_budget: PodDisruptionBudget,
    /// Only when `observability.serviceMonitor` is set (and applied only if the CRD exists).
    pub service_monitor: Option<DynamicObject>,
    /// Only when `observability.prometheusRule` is set (and applied only if the CRD exists).
    pub prometheus_rule: Option<DynamicObject>,
    /// `spec.networkPolicy`'s policies (the listeners' egress fences are built per listener).
    pub network_policies: Vec<NetworkPolicy>,
    /// Objects a switch of the spec turned off: the controller deletes them if the platform owns them.
    pub unwanted: Vec<Unwanted>,
}

/// An object the platform may have created earlier that its spec no longer asks for.
#[derive(Clone, Debug)]
pub struct Unwanted {
    pub kind: &'static str,
    /// The uid the object's controller owner reference must carry; `None`: the platform's.
    pub owner_uid: Option<String>,
    pub resource: ApiResource,
    pub name: String,
    /// The switch that is off, for the Event (`spec.api.autoscaling is not set`).
    pub why: &'static str,
}

/// Checks what the schema cannot: rules that would otherwise surface as an apply error later.
pub fn validate_platform(platform: &WalletPlatform) -> Result<(), String> {
    let name = platform.name_any();
    if name.len() > PLATFORM_NAME_MAX {
        return Err(format!(
            "the name {name:?} is longer than {PLATFORM_NAME_MAX} characters"
        ));
    }
    let spec = &platform.spec;
    if spec.image.trim().is_empty() {
        return Err("spec.image is empty".into());
    }
    if let Some(autoscaling) = &spec.api.autoscaling {
        if autoscaling.min_replicas > autoscaling.max_replicas {
            return Err(format!(
                "spec.api.autoscaling.minReplicas ({}) exceeds maxReplicas ({})",
                autoscaling.min_replicas, autoscaling.max_replicas
            ));
        }
    }
    Ok(())
}

/// Builds the platform's objects. Call [`validate_platform`] first. `listeners` are the
/// platform's ChainListeners that are running (their Secrets exist): their nodes are where the
/// api checks provider webhooks and the reconciler reads reserves.
pub fn build_platform(
    platform: &WalletPlatform,
    assets: &AssetSelection,
    listeners: &[ChainListener],
) -> PlatformObjects {
    let rpc_env = chain_rpc_env(listeners);
    PlatformObjects {
        assets: assets_config_map(platform, &assets.file),
        service_account: service_account(platform),
        role: role(platform),
        role_binding: role_binding(platform),
        deployments: vec![
            api_deployment(platform, &rpc_env),
            outbox_deployment(platform),
            reconciler_deployment(platform, &rpc_env),
        ],
        api_service: api_service(platform),
        metrics_service: metrics_service(platform),
        api_autoscaler: api_autoscaler(platform),
        api_disruption_budget: api_disruption_budget(platform),
        service_monitor: platform
            .spec
            .observability
            .service_monitor
            .then(|| super::service_monitor(platform)),
        prometheus_rule: platform
            .spec
            .observability
            .prometheus_rule
            .then(|| super::prometheus_rule(platform)),
        network_policies: super::platform_network_policies(platform),
        unwanted: unwanted(platform),
    }
}

/// What the spec's switches turned off, by kind and name.
fn unwanted(platform: &WalletPlatform) -> Vec<Unwanted> {
    let name = platform.name_any();
    let spec = &platform.spec;
    // Before the API had a metrics port of its own, the headless Service was `P-workers`.
    let mut unwanted = vec![Unwanted {
        kind: "Service",
        owner_uid: None,
        resource: ApiResource::erase::<Service>(&()),
        name: format!("{name}-workers"),
        why: "the headless Service of every metrics port is now <platform>-metrics",
    }];
    if spec.api.autoscaling.is_none() {
        unwanted.push(Unwanted {
            kind: "HorizontalPodAutoscaler",
            owner_uid: None,
            resource: ApiResource::erase::<HorizontalPodAutoscaler>(&()),
            name: deployment_name(&name, Component::Api),
            why: "spec.api.autoscaling is not set",
        });
    }
    if !spec.observability.service_monitor {
        unwanted.push(Unwanted {
            kind: "ServiceMonitor",
            owner_uid: None,
            resource: super::service_monitor_resource(),
            name: name.clone(),
            why: "spec.observability.serviceMonitor is false",
        });
    }
    if !spec.observability.prometheus_rule {
        unwanted.push(Unwanted {
            kind: "PrometheusRule",
            owner_uid: None,
            resource: super::prometheus_rule_resource(),
            name,
            why: "spec.observability.prometheusRule is false",
        });
    }
    let wanted: Vec<String> = super::platform_network_policies(platform)
        .iter()
        .map(|p| p.name_any())
        .collect();
    for policy in super::platform_network_policy_names(&platform.name_any()) {
        if !wanted.contains(&policy) {
            unwanted.push(Unwanted {
                kind: "NetworkPolicy",
                owner_uid: None,
                resource: ApiResource::erase::<NetworkPolicy>(&()),
                name: policy,
                why: "spec.networkPolicy does not ask for it",
            });
        }
    }
    unwanted
}

fn service_account(platform: &WalletPlatform) -> ServiceAccount {
    let name = platform.name_any();
    ServiceAccount {
        metadata: owned_meta(
            platform,
            service_account_name(&name),
            labels(&name, None, &platform.spec.image),
        ),
        ..ServiceAccount::default()
    }
}

/// Least privilege: the workloads may read and watch their own assets ConfigMap and nothing else
/// (a list or watch is authorized by name when it selects `metadata.name`, as theirs does).
fn role(platform: &WalletPlatform) -> Role {
    let name = platform.name_any();
    Role {
        metadata: owned_meta(
            platform,
            service_account_name(&name),
            labels(&name, None, &platform.spec.image),
        ),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["configmaps".into()]),
            resource_names: Some(vec![assets_config_map_name(&name)]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..PolicyRule::default()
        }]),
    }
}

fn role_binding(platform: &WalletPlatform) -> RoleBinding {
    let name = platform.name_any();
    RoleBinding {
        metadata: owned_meta(
            platform,
            service_account_name(&name),
            labels(&name, None, &platform.spec.image),
        ),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: service_account_name(&name),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: service_account_name(&name),
            namespace: platform.namespace(),
            ..Subject::default()
        }]),
    }
}

fn deployment(
    platform: &WalletPlatform,
    workload: Workload,
    replicas: Option<i32>,
    recreate: bool,
) -> Deployment {
    let name = platform.name_any();
    let component = workload.component;
    Deployment {
        metadata: owned_meta(
            platform,
            deployment_name(&name, component),
            labels(&name, Some(component), &platform.spec.image),
        ),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name, component)),
                ..LabelSelector::default()
            },
            strategy: recreate.then(|| DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            revision_history_limit: Some(5),
            template: pod_template(platform, workload),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn api_deployment(platform: &WalletPlatform, rpc_env: &[EnvVar]) -> Deployment {
    let spec = &platform.spec;
    let mut vars = common_env(platform, Component::Api, API_PORT);
    vars.push(secret_env("COFFER_JWT_SECRET", &spec.jwt_secret_ref, "secret"));
    vars.extend(pii_env(platform));
    vars.extend_from_slice(rpc_env);
    vars.extend(liability_env(platform, false));
    if let Some(kyc) = &spec.api.kyc {
        vars.push(env("COFFER_KYC_DEFAULT_TIER", kyc.default_tier.as_str()));
        vars.push(env(
            "COFFER_KYC_BASIC_LIMIT_PERCENT",
            kyc.basic_limit_percent.to_string(),
        ));
    }
    // /metrics on its own port: the public port (what an Ingress routes) never serves it.
    vars.push(env("COFFER_METRICS_LISTEN", format!("0.0.0.0:{METRICS_PORT}")));
    let workload = Workload {
        component: Component::Api,
        args: vec!["api".into()],
        port_name: "http",
        port: API_PORT,
        metrics_port: true,
        env: vars,
        resources: spec.api.resources.clone(),
        labels: worker_labels(platform, Component::Api),
        mounts: Vec::new(),
    };
    // With an autoscaler the HPA owns the replica count; applying one would fight it.
    let replicas = spec.api.autoscaling.is_none().then_some(spec.api.replicas);
    deployment(platform, workload, replicas, false)
}

/// A component's labels, marked as having a `metrics` port.
fn worker_labels(
    platform: &WalletPlatform,
    component: Component,
) -> std::collections::BTreeMap<String, String> {
    let mut labels = labels(&platform.name_any(), Some(component), &platform.spec.image);
    labels.insert(METRICS_LABEL.into(), "true".into());
    labels
}

fn outbox_deployment(platform: &WalletPlatform) -> Deployment {
    let spec = &platform.spec;
    let workload = Workload {
        component: Component::OutboxPublisher,
        args: vec!["outbox-publisher".into()],
        port_name: "metrics",
        port: METRICS_PORT,
        metrics_port: false,
        env: common_env(platform, Component::OutboxPublisher, METRICS_PORT),
        resources: spec.outbox_publisher.resources.clone(),
        labels: worker_labels(platform, Component::OutboxPublisher),
        mounts: Vec::new(),
    };
    deployment(platform, workload, Some(spec.outbox_publisher.replicas), false)
}

fn reconciler_deployment(platform: &WalletPlatform, rpc_env: &[EnvVar]) -> Deployment {
    let spec = &platform.spec;
    let mut vars = common_env(platform, Component::Reconciler, METRICS_PORT);
    vars.push(env_interval(spec.reconciler.interval_seconds));
    vars.extend_from_slice(rpc_env);
    vars.extend(liability_env(platform, true));
    let heads = &spec.reconciler.audit_heads;
    vars.push(env("COFFER_AUDIT_HEADS_PATH", AUDIT_HEADS_FILE));
    if let Some(seconds) = heads.export_interval_seconds {
        vars.push(env("COFFER_AUDIT_EXPORT_INTERVAL_SECONDS", seconds.to_string()));
    }
    let workload = Workload {
        component: Component::Reconciler,
        args: vec!["reconciler".into()],
        port_name: "metrics",
        port: METRICS_PORT,
        metrics_port: false,
        env: vars,
        resources: spec.reconciler.resources.clone(),
        labels: worker_labels(platform, Component::Reconciler),
        mounts: vec![audit_heads_mount(heads)],
    };
    // Exactly one reconciler at any time, also during a rollout.
    deployment(platform, workload, Some(1), true)
}

/// Where the reconciler's audit heads export is mounted, and the file it appends to.
pub const AUDIT_HEADS_DIR: &str = "/var/lib/coffer/audit-heads";
const AUDIT_HEADS_FILE: &str = "/var/lib/coffer/audit-heads/heads.jsonl";

/// The export's volume: the claim the spec names, else an emptyDir (lost with the pod).
fn audit_heads_mount(spec: &crate::crd::AuditHeadsSpec) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: "audit-heads".into(),
        persistent_volume_claim: spec
            .claim_name
            .as_ref()
            .map(|claim| PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: None,
            }),
        empty_dir: spec.claim_name.is_none().then(EmptyDirVolumeSource::default),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: "audit-heads".into(),
        mount_path: AUDIT_HEADS_DIR.into(),
        ..VolumeMount::default()
    };
    (volume, mount)
}

/// The keys that seal users' personal data: the api is the one workload that reads users.
fn pii_env(platform: &WalletPlatform) -> Vec<EnvVar> {
    let name = &platform.spec.pii_keys_secret_ref.name;
    let key = |key: &str| crate::crd::SecretKeyRef {
        name: name.clone(),
        key: Some(key.into()),
    };
    let mut previous = secret_env("COFFER_PII_KEYS_PREVIOUS", &key("previous-keys"), "previous-keys");
    // Only during a rotation: the pod starts without it.
    if let Some(selector) = previous
        .value_from
        .as_mut()
        .and_then(|source| source.secret_key_ref.as_mut())
    {
        selector.optional = Some(true);
    }
    vec![
        secret_env("COFFER_PII_KEY", &key("key"), "key"),
        secret_env("COFFER_PII_INDEX_KEY", &key("index-key"), "index-key"),
        previous,
    ]
}

/// `COFFER_CHAIN_RPC_URLS` (`chain=url,…`) from the listeners' Secrets: each node's URL (which
/// usually carries a provider's key) comes from its Secret as `COFFER_RPC_URL_<n>` and is joined by
/// Kubernetes' `$(VAR)` expansion, so no URL is ever written into a Deployment. One node per
/// chain: the first listener by name. Empty without listeners (webhooks refused, custody skipped).
fn chain_rpc_env(listeners: &[ChainListener]) -> Vec<EnvVar> {
    let mut by_chain = std::collections::BTreeMap::new();
    let mut sorted: Vec<&ChainListener> = listeners.iter().collect();
    sorted.sort_by_key(|l| l.name_any());
    for listener in sorted {
        by_chain
            .entry(listener.spec.chain.clone())
            .or_insert(&listener.spec.rpc_secret_ref);
    }
    if by_chain.is_empty() {
        return Vec::new();
    }
    let mut vars = Vec::new();
    let mut entries = Vec::new();
    for (n, (chain, secret)) in by_chain.into_iter().enumerate() {
        let name = format!("COFFER_RPC_URL_{n}");
        vars.push(secret_env(&name, secret, "url"));
        entries.push(format!("{chain}=$({name})"));
    }
    vars.push(env("COFFER_CHAIN_RPC_URLS", entries.join(",")));
    vars
}

/// The liabilities signing key (api and reconciler) and, for the reconciler, its schedule.
fn liability_env(platform: &WalletPlatform, schedule: bool) -> Vec<EnvVar> {
    let Some(spec) = &platform.spec.liabilities else {
        return Vec::new();
    };
    let mut vars = vec![secret_env(
        "COFFER_LIABILITY_SIGNING_KEY",
        &spec.signing_key_secret_ref,
        "key",
    )];
    if let Some(seconds) = spec.publish_interval_seconds.filter(|_| schedule) {
        vars.push(env(
            "COFFER_LIABILITY_PUBLISH_INTERVAL_SECONDS",
            seconds.to_string(),
        ));
    }
    vars
}

fn env_interval(seconds: u32) -> EnvVar {
    env("COFFER_RECONCILE_INTERVAL_SECONDS", seconds.to_string())
}

fn api_service(platform: &WalletPlatform) -> Service {
    let name = platform.name_any();
    Service {
        metadata: owned_meta(
            platform,
            deployment_name(&name, Component::Api),
            labels(&name, Some(Component::Api), &platform.spec.image),
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&name, Component::Api)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: API_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Headless Service over every pod's `metrics` port (api, workers, listeners), for the ServiceMonitor.
fn metrics_service(platform: &WalletPlatform) -> Service {
    let name = platform.name_any();
    let mut selector = std::collections::BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "coffer".to_string()),
        (super::INSTANCE_LABEL.to_string(), name.clone()),
    ]);
    selector.insert(METRICS_LABEL.into(), "true".into());
    let mut service_labels = labels(&name, None, &platform.spec.image);
    service_labels.insert(super::SCRAPE_LABEL.into(), "metrics".into());
    Service {
        metadata: owned_meta(platform, metrics_service_name(&name), service_labels),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("metrics".into()),
                port: METRICS_PORT,
                target_port: Some(IntOrString::String("metrics".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn api_autoscaler(platform: &WalletPlatform) -> Option<HorizontalPodAutoscaler> {
    let name = platform.name_any();
    let autoscaling = platform.spec.api.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: owned_meta(
            platform,
            deployment_name(&name, Component::Api),
            labels(&name, Some(Component::Api), &platform.spec.image),
        ),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: deployment_name(&name, Component::Api),
            },
            min_replicas: Some(autoscaling.min_replicas),
            max_replicas: autoscaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(autoscaling.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        ..HorizontalPodAutoscaler::default()
    })
}

/// At most one API pod down by voluntary disruption; never blocks a drain of a one-replica API.
fn api_disruption_budget(platform: &WalletPlatform) -> PodDisruptionBudget {
    let name = platform.name_any();
    PodDisruptionBudget {
        metadata: owned_meta(
            platform,
            deployment_name(&name, Component::Api),
            labels(&name, Some(Component::Api), &platform.spec.image),
        ),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name, Component::Api)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}
