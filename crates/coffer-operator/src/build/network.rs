//! NetworkPolicies: who may reach the platform's pods and its in-namespace dependencies, and
//! where a signer's chain listener may connect. Policies only add allowances, and a pod selected
//! by any policy of a type denies what none allows; so no rule here is ever without peers (a rule
//! with no `from`/`to` would allow everyone).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec as K8sNetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{
    chain_listener_deployment_name, labels, owned_meta, selector_labels, Component, INSTANCE_LABEL,
    LISTENER_LABEL,
};
use crate::crd::{ChainListener, DependencyNetwork, NetworkPolicySpec, WalletPlatform};

const MONGODB_PORT: u16 = 27017;
const RABBITMQ_PORT: u16 = 5672;
/// The API server's ports: 443 on managed clusters, 6443 on kubeadm-made ones.
const API_SERVER_PORTS: [i32; 2] = [443, 6443];

/// Whether a listener's pod may reach the API server: unfenced, or fenced with
/// `networkPolicy.apiServer` declared. Otherwise it cannot watch its assets ConfigMap.
pub fn listener_reaches_api_server(platform: &WalletPlatform, listener: &ChainListener) -> bool {
    match (&platform.spec.network_policy, &listener.spec.signer_secret_ref) {
        (Some(spec), Some(_)) => !spec.api_server.is_empty(),
        _ => true,
    }
}

/// Names of the platform's policies: `P-ingress`, `P-api`, `P-mongodb`, `P-rabbitmq`.
pub fn platform_network_policy_names(platform: &str) -> [String; 4] {
    ["ingress", "api", "mongodb", "rabbitmq"].map(|suffix| format!("{platform}-{suffix}"))
}

/// `P-listener-L-egress`: the egress fence of a signer's chain listener.
pub fn listener_egress_policy_name(platform: &str, listener: &str) -> String {
    format!("{}-egress", chain_listener_deployment_name(platform, listener))
}

/// The platform's policies, by name (empty without `spec.networkPolicy`).
pub fn platform_network_policies(platform: &WalletPlatform) -> Vec<NetworkPolicy> {
    let Some(spec) = &platform.spec.network_policy else {
        return Vec::new();
    };
    let name = platform.name_any();
    let [ingress, api, mongodb, rabbitmq] = platform_network_policy_names(&name);
    let mut policies = vec![
        // Every pod of the platform: only the metrics port, only from metricsFrom.
        policy(
            platform,
            ingress,
            platform_pods(&name),
            allow_from(&spec.metrics_from, &[named_port("metrics")]),
        ),
        policy(
            platform,
            api,
            selector(selector_labels(&name, Component::Api)),
            allow_from(&spec.api_from, &[named_port("http")]),
        ),
    ];
    for (policy_name, dependency, default_port) in [
        (mongodb, &spec.mongodb, MONGODB_PORT),
        (rabbitmq, &spec.rabbitmq, RABBITMQ_PORT),
    ] {
        if let Some(pods) = dependency.as_ref().and_then(|d| d.pod_selector.clone()) {
            let ports = tcp_ports(dependency.as_ref(), default_port);
            let rules = vec![
                // The platform's pods, on the service ports.
                NetworkPolicyIngressRule {
                    from: Some(vec![peer_pods(platform_pods(&name))]),
                    ports: Some(ports),
                },
                // Its own pods (replication, clustering), on any port.
                NetworkPolicyIngressRule {
                    from: Some(vec![peer_pods(selector(pods.clone()))]),
                    ports: None,
                },
            ];
            policies.push(policy(platform, policy_name, selector(pods), rules));
        }
    }
    policies
}

/// The egress fence of a chain listener with a signer on a platform with NetworkPolicies: DNS,
/// the platform's MongoDB and the listener's `rpcEgress`, nothing else. `Ok(None)` when neither
/// applies; `Err` (for the listener's status) when the fence cannot be drawn.
pub fn listener_egress_policy(
    platform: &WalletPlatform,
    listener: &ChainListener,
) -> Result<Option<NetworkPolicy>, String> {
    let (Some(spec), Some(_)) = (&platform.spec.network_policy, &listener.spec.signer_secret_ref) else {
        return Ok(None);
    };
    if listener.spec.rpc_egress.is_empty() {
        return Err(
            "the listener holds the hot wallet's key and the platform enforces NetworkPolicies: \
             declare spec.rpcEgress (where its node is), so its pod reaches nothing else"
                .into(),
        );
    }
    if listener
        .spec
        .rpc_egress
        .iter()
        .any(|rule| rule.to.as_ref().is_none_or(Vec::is_empty))
    {
        // The schema refuses it too; a rule without `to` would open the fence to everything.
        return Err("every spec.rpcEgress rule must name where it goes (`to`)".into());
    }
    let mongodb = mongodb_egress(spec).ok_or_else(|| {
        "the listener holds the hot wallet's key and the platform enforces NetworkPolicies: declare \
         the platform's spec.networkPolicy.mongodb, so its pod can reach the ledger and nothing else"
            .to_string()
    })?;
    let platform_name = platform.name_any();
    let listener_name = listener.name_any();
    let mut pods = selector_labels(&platform_name, Component::ChainListener);
    pods.insert(LISTENER_LABEL.into(), listener_name.clone());
    let mut egress = vec![dns_egress(), mongodb];
    if !spec.api_server.is_empty() {
        egress.push(NetworkPolicyEgressRule {
            to: Some(spec.api_server.clone()),
            ports: Some(
                API_SERVER_PORTS
                    .map(|p| port("TCP", IntOrString::Int(p)))
                    .to_vec(),
            ),
        });
    }
    egress.extend(listener.spec.rpc_egress.iter().cloned());
    let mut object_labels = labels(
        &platform_name,
        Some(Component::ChainListener),
        &platform.spec.image,
    );
    object_labels.insert(LISTENER_LABEL.into(), listener_name.clone());
    Ok(Some(NetworkPolicy {
        metadata: owned_meta(
            listener,
            listener_egress_policy_name(&platform_name, &listener_name),
            object_labels,
        ),
        spec: Some(K8sNetworkPolicySpec {
            pod_selector: Some(selector(pods)),
            policy_types: Some(vec!["Egress".into()]),
            egress: Some(egress),
            ingress: None,
        }),
    }))
}

/// An ingress policy of the platform: `pods` accept only what `ingress` allows.
fn policy(
    platform: &WalletPlatform,
    name: String,
    pods: LabelSelector,
    ingress: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    let platform_name = platform.name_any();
    NetworkPolicy {
        metadata: owned_meta(platform, name, labels(&platform_name, None, &platform.spec.image)),
        spec: Some(K8sNetworkPolicySpec {
            pod_selector: Some(pods),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            egress: None,
        }),
    }
}

/// One rule allowing `peers` on `ports`, or none at all when there are no peers (never an empty
/// `from`, which would allow everyone).
fn allow_from(peers: &[NetworkPolicyPeer], ports: &[NetworkPolicyPort]) -> Vec<NetworkPolicyIngressRule> {
    if peers.is_empty() {
        return Vec::new();
    }
    vec![NetworkPolicyIngressRule {
        from: Some(peers.to_vec()),
        ports: Some(ports.to_vec()),
    }]
}

/// The platform's MongoDB as an egress rule: its pods in the namespace and its external peers.
fn mongodb_egress(spec: &NetworkPolicySpec) -> Option<NetworkPolicyEgressRule> {
    let mongodb = spec.mongodb.as_ref()?;
    let mut to: Vec<NetworkPolicyPeer> = mongodb
        .pod_selector
        .clone()
        .map(|pods| peer_pods(selector(pods)))
        .into_iter()
        .collect();
    to.extend(mongodb.external.iter().cloned());
    Some(NetworkPolicyEgressRule {
        to: Some(to),
        ports: Some(tcp_ports(Some(mongodb), MONGODB_PORT)),
    })
}

/// The cluster's DNS (kube-dns / CoreDNS pods in kube-system), UDP and TCP 53.
fn dns_egress() -> NetworkPolicyEgressRule {
    let dns = NetworkPolicyPeer {
        namespace_selector: Some(selector(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            "kube-system".to_string(),
        )]))),
        pod_selector: Some(selector(BTreeMap::from([(
            "k8s-app".to_string(),
            "kube-dns".to_string(),
        )]))),
        ..NetworkPolicyPeer::default()
    };
    NetworkPolicyEgressRule {
        to: Some(vec![dns]),
        ports: Some(vec![
            port("UDP", IntOrString::Int(53)),
            port("TCP", IntOrString::Int(53)),
        ]),
    }
}

fn tcp_ports(dependency: Option<&DependencyNetwork>, default: u16) -> Vec<NetworkPolicyPort> {
    let ports = dependency.map(|d| d.ports.clone()).unwrap_or_default();
    let ports = if ports.is_empty() { vec![default] } else { ports };
    ports
        .into_iter()
        .map(|p| port("TCP", IntOrString::Int(i32::from(p))))
        .collect()
}

fn named_port(name: &str) -> NetworkPolicyPort {
    port("TCP", IntOrString::String(name.into()))
}

fn port(protocol: &str, port: IntOrString) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(port),
        end_port: None,
    }
}

/// Every pod of the platform (api, workers, listeners).
fn platform_pods(platform: &str) -> LabelSelector {
    selector(BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "coffer".to_string()),
        (INSTANCE_LABEL.to_string(), platform.to_string()),
    ]))
}

fn peer_pods(pods: LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(pods),
        ..NetworkPolicyPeer::default()
    }
}

fn selector(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Resources;

    fn platform_with(policy: serde_json::Value) -> WalletPlatform {
        let resources = Resources::from_yaml(include_str!("../../tests/fixtures/minimal.yaml")).unwrap();
        let mut platform = resources.platforms[0].clone();
        platform.spec.network_policy = Some(serde_json::from_value(policy).unwrap());
        platform
    }

    #[test]
    fn without_metrics_peers_the_platform_pods_accept_nothing_but_the_api_port() {
        let platform = platform_with(serde_json::json!({
            "apiFrom": [{ "namespaceSelector": { "matchLabels": { "team": "edge" } } }],
        }));
        let policies = platform_network_policies(&platform);
        let names: Vec<_> = policies.iter().map(|p| p.name_any()).collect();
        assert_eq!(
            names,
            ["coffer-ingress", "coffer-api"],
            "no MongoDB or RabbitMQ pods declared"
        );
        let ingress = policies[0].spec.as_ref().unwrap().ingress.as_ref().unwrap();
        assert!(
            ingress.is_empty(),
            "deny all, not a rule without peers (allow all): {ingress:?}"
        );
        for policy in &policies {
            for rule in policy.spec.as_ref().unwrap().ingress.iter().flatten() {
                assert!(rule.from.as_ref().is_some_and(|f| !f.is_empty()), "{rule:?}");
            }
        }
    }
}
