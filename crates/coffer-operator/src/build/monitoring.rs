//! Prometheus Operator objects, built as dynamic objects: their CRDs may not exist in the cluster
//! and the operator does not depend on their Rust types.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::ResourceExt;
use serde_json::json;

use super::{deployment_name, labels, metrics_service_name, owned_meta, Component};
use crate::crd::WalletPlatform;

/// `monitoring.coreos.com/v1` ServiceMonitor.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

/// `monitoring.coreos.com/v1` PrometheusRule.
pub fn prometheus_rule_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PrometheusRule"),
        "prometheusrules",
    )
}

/// Scrapes the `metrics` port of every pod (api, workers, listeners) through the headless
/// metrics Service; the API Service's public port serves no metrics.
pub fn service_monitor(platform: &WalletPlatform) -> DynamicObject {
    let name = platform.name_any();
    let resource = service_monitor_resource();
    let mut object = DynamicObject::new(&name, &resource).data(json!({
        "spec": {
            "selector": { "matchLabels": {
                "app.kubernetes.io/name": "coffer",
                "app.kubernetes.io/instance": name,
                "app.kubernetes.io/managed-by": super::MANAGED_BY,
                super::SCRAPE_LABEL: "metrics",
            }},
            "endpoints": [
                { "port": "metrics", "path": "/metrics", "interval": "30s" },
            ],
        }
    }));
    object.metadata = owned_meta(platform, name.clone(), labels(&name, None, &platform.spec.image));
    object
}

/// Availability alerts for the platform's workloads. Application alerts (ledger, outbox, chain)
/// live with the dashboards in `deploy/monitoring/`.
pub fn prometheus_rule(platform: &WalletPlatform) -> DynamicObject {
    let name = platform.name_any();
    let namespace = platform.namespace().unwrap_or_default();
    let api = deployment_name(&name, Component::Api);
    let metrics = metrics_service_name(&name);
    let resource = prometheus_rule_resource();
    let mut object = DynamicObject::new(&name, &resource).data(json!({
        "spec": {
            "groups": [{
                "name": format!("coffer-{name}.availability"),
                "rules": [
                    {
                        "alert": "CofferTargetDown",
                        "expr": format!(r#"up{{namespace="{namespace}", service="{metrics}"}} == 0"#),
                        "for": "5m",
                        "labels": { "severity": "critical" },
                        "annotations": {
                            "summary": "A Coffer pod does not answer /metrics",
                            "description": "{{ $labels.pod }} of WalletPlatform {{ $labels.namespace }}/".to_string() + &name + " has been down for 5 minutes.",
                        },
                    },
                    {
                        "alert": "CofferApiReplicasUnavailable",
                        "expr": format!(r#"kube_deployment_status_replicas_unavailable{{namespace="{namespace}", deployment="{api}"}} > 0"#),
                        "for": "10m",
                        "labels": { "severity": "warning" },
                        "annotations": {
                            "summary": "Coffer API replicas unavailable",
                            "description": format!("Deployment {namespace}/{api} has had unavailable replicas for 10 minutes."),
                        },
                    },
                ],
            }],
        }
    }));
    object.metadata = owned_meta(platform, name.clone(), labels(&name, None, &platform.spec.image));
    object
}
