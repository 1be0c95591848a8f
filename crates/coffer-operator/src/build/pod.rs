//! The pod template every Coffer workload shares: one image, hardened security context, the
//! assets ConfigMap mounted as a directory, health probes and the common environment.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{
    assets_config_map_name, service_account_name, Component, ASSETS_DIR, ASSETS_FILE_PATH, METRICS_PORT,
};
use crate::crd::{SecretKeyRef, WalletPlatform};

/// The distroless `nonroot` user.
const NONROOT_UID: i64 = 65532;

/// One workload's container: what differs between roles.
pub(crate) struct Workload {
    pub component: Component,
    pub args: Vec<String>,
    pub port_name: &'static str,
    pub port: i32,
    /// A second port, `metrics` ([`METRICS_PORT`]), besides `port` (the API's operations port).
    pub metrics_port: bool,
    pub env: Vec<EnvVar>,
    pub resources: Option<ResourceRequirements>,
    pub labels: BTreeMap<String, String>,
    /// Extra volumes and where the container mounts them (e.g. a signer key Secret).
    pub mounts: Vec<(Volume, VolumeMount)>,
}

pub(crate) fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

pub(crate) fn secret_env(name: &str, secret: &SecretKeyRef, default_key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key_or(default_key).to_string(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Environment every role gets: connections, assets file, log format, tracing.
pub(crate) fn common_env(platform: &WalletPlatform, component: Component, listen_port: i32) -> Vec<EnvVar> {
    let spec = &platform.spec;
    let mut vars = vec![
        env("COFFER_LISTEN", format!("0.0.0.0:{listen_port}")),
        env("COFFER_LOG_FORMAT", "json"),
        env("COFFER_ASSETS_FILE", ASSETS_FILE_PATH),
        // Followed through the API server: changes arrive with the watch event, not the kubelet's sync.
        env(
            "COFFER_ASSETS_CONFIGMAP",
            format!(
                "{}/{}",
                platform.namespace().unwrap_or_default(),
                assets_config_map_name(&platform.name_any())
            ),
        ),
        secret_env("MONGODB_URI", &spec.mongodb.secret_ref, "uri"),
        env("COFFER_DATABASE", spec.mongodb.database.clone()),
        secret_env("AMQP_URI", &spec.rabbitmq.secret_ref, "uri"),
        // Every role connects to the ledger and may write audit records (DbArgs requires it).
        secret_env("COFFER_AUDIT_KEY", &spec.audit_key_secret_ref, "key"),
    ];
    if let Some(endpoint) = &spec.observability.otlp_endpoint {
        vars.push(env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()));
        vars.push(env("OTEL_SERVICE_NAME", format!("coffer-{}", component.as_str())));
    }
    vars
}

fn http_probe(path: &str, port_name: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port_name.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NONROOT_UID),
        run_as_group: Some(NONROOT_UID),
        fs_group: Some(NONROOT_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// The pod template of a workload of `platform`.
pub(crate) fn pod_template(platform: &WalletPlatform, workload: Workload) -> PodTemplateSpec {
    let spec = &platform.spec;
    let name = platform.name_any();
    let container = Container {
        name: workload.component.as_str().into(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(spec.image_pull_policy.as_str().into()),
        args: Some(workload.args),
        ports: Some(
            std::iter::once((workload.port_name, workload.port))
                .chain(workload.metrics_port.then_some(("metrics", METRICS_PORT)))
                .map(|(name, port)| ContainerPort {
                    name: Some(name.into()),
                    container_port: port,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        env: Some(workload.env),
        resources: workload.resources,
        startup_probe: Some(http_probe("/healthz", workload.port_name, 2, 30)),
        liveness_probe: Some(http_probe("/healthz", workload.port_name, 10, 3)),
        readiness_probe: Some(http_probe("/readyz", workload.port_name, 5, 3)),
        security_context: Some(container_security_context()),
        volume_mounts: Some(
            vec![
                // The whole directory, never a subPath: kubelet only updates directory mounts in place,
                // which is how asset changes reach running services without a restart.
                VolumeMount {
                    name: "assets".into(),
                    mount_path: ASSETS_DIR.into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
                VolumeMount {
                    name: "tmp".into(),
                    mount_path: "/tmp".into(),
                    ..VolumeMount::default()
                },
            ]
            .into_iter()
            .chain(workload.mounts.iter().map(|(_, mount)| mount.clone()))
            .collect(),
        ),
        ..Container::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(workload.labels),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(service_account_name(&name)),
            security_context: Some(pod_security_context()),
            containers: vec![container],
            volumes: Some(
                vec![
                    Volume {
                        name: "assets".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: assets_config_map_name(&name),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                    Volume {
                        name: "tmp".into(),
                        empty_dir: Some(EmptyDirVolumeSource {
                            size_limit: Some(Quantity("64Mi".into())),
                            ..EmptyDirVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                ]
                .into_iter()
                .chain(workload.mounts.into_iter().map(|(volume, _)| volume))
                .collect(),
            ),
            ..PodSpec::default()
        }),
    }
}
