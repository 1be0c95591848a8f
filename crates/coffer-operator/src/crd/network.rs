use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// NetworkPolicies of a platform: the API reachable only from `apiFrom`, metrics only from
/// `metricsFrom`, nothing else into the platform's pods; MongoDB and RabbitMQ pods of the
/// namespace reachable only from the platform's pods; and a signer's chain listener reaching only
/// DNS, MongoDB and its node. Absent: no policies (those the operator made are deleted).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Who may reach the API's port (8080 `http`): the ingress controller, e.g. a
    /// `namespaceSelector` of its namespace. At least one peer (an empty list would allow everyone).
    #[schemars(length(min = 1))]
    pub api_from: Vec<NetworkPolicyPeer>,
    /// Who may scrape every pod's metrics port (9090 `metrics`): Prometheus. None: nobody.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics_from: Vec<NetworkPolicyPeer>,
    /// Where the ledger's MongoDB runs. Needed by a chain listener with a signer (its egress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongodb: Option<DependencyNetwork>,
    /// Where RabbitMQ runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<DependencyNetwork>,
    /// Where the Kubernetes API server is (its endpoints' addresses as `ipBlock`, ports 443 and
    /// 6443): lets a signer's fenced chain listener follow its assets ConfigMap by watch. None:
    /// that listener reads the mounted file instead (changes arrive within the kubelet's sync).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_server: Vec<NetworkPolicyPeer>,
}

/// Where a dependency's pods or addresses are.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "has(self.podSelector) || (has(self.external) && size(self.external) > 0)",
    "name its pods (podSelector) or where it is (external)"
))]
pub struct DependencyNetwork {
    /// Labels of its pods in the platform's namespace: the operator then lets only the
    /// platform's pods (and those pods themselves, for replication) reach them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<BTreeMap<String, String>>,
    /// Where it runs outside the namespace (another namespace's pods, a managed service's
    /// addresses as `ipBlock`), for the egress of a signer's chain listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<NetworkPolicyPeer>,
    /// Its TCP ports; default 27017 for MongoDB, 5672 for RabbitMQ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub ports: Vec<u16>,
}
