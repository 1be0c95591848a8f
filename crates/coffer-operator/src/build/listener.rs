use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{KeyToPath, SecretVolumeSource, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::pod::{common_env, env, pod_template, secret_env, Workload};
use super::{labels, owned_meta, selector_labels, Component, LISTENER_LABEL, METRICS_LABEL, METRICS_PORT};
use crate::crd::{ChainListener, SecretKeyRef, WalletPlatform};

/// Where the signer's key file is mounted (read-only, owner-only).
const SIGNER_DIR: &str = "/var/run/coffer/signer";

/// The signer key Secret as a read-only file `key` (mode 0400), never an environment variable.
fn signer_volume(secret: &SecretKeyRef) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: "signer".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.name.clone()),
            items: Some(vec![KeyToPath {
                key: secret.key.clone().unwrap_or_else(|| "key".into()),
                path: "key".into(),
                mode: None,
            }]),
            default_mode: Some(0o400),
            optional: Some(false),
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: "signer".into(),
        mount_path: SIGNER_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    (volume, mount)
}

/// `<platform>-listener-<listener>`: the Deployment of one ChainListener.
pub fn chain_listener_deployment_name(platform: &str, listener: &str) -> String {
    format!("{platform}-listener-{listener}")
}

/// The single-replica Deployment following one chain. Owned by the ChainListener (deleting it
/// removes the Deployment); the platform's finalizer removes it when the platform goes.
pub fn chain_listener_deployment(platform: &WalletPlatform, listener: &ChainListener) -> Deployment {
    let platform_name = platform.name_any();
    let listener_name = listener.name_any();
    let spec = &listener.spec;
    let mut vars = common_env(platform, Component::ChainListener, METRICS_PORT);
    if !super::listener_reaches_api_server(platform, listener) {
        // Fenced off the API server: the mounted file is its catalog (the kubelet's sync delay).
        vars.retain(|v| v.name != "COFFER_ASSETS_CONFIGMAP");
    }
    vars.push(secret_env("ETH_RPC_URL", &spec.rpc_secret_ref, "url"));
    vars.push(env("COFFER_POLL_INTERVAL_MS", spec.poll_interval_ms.to_string()));
    if let Some(block) = spec.start_block {
        vars.push(env("COFFER_START_BLOCK", block.to_string()));
    }
    let mut mounts = Vec::new();
    if let Some(secret) = &spec.signer_secret_ref {
        vars.push(env("COFFER_SIGNER_KEY_FILE", format!("{SIGNER_DIR}/key")));
        mounts.push(signer_volume(secret));
        if let Some(replacement) = &spec.replacement {
            if let Some(seconds) = replacement.after_seconds {
                vars.push(env(
                    "COFFER_WITHDRAWAL_REPLACE_AFTER_SECONDS",
                    seconds.to_string(),
                ));
            }
            if let Some(gwei) = replacement.max_fee_per_gas_cap_gwei {
                vars.push(env("COFFER_MAX_FEE_PER_GAS_CAP_GWEI", gwei.to_string()));
            }
        }
    }
    let mut pod_labels = labels(
        &platform_name,
        Some(Component::ChainListener),
        &platform.spec.image,
    );
    pod_labels.insert(LISTENER_LABEL.into(), listener_name.clone());
    pod_labels.insert(METRICS_LABEL.into(), "true".into());
    let mut selector = selector_labels(&platform_name, Component::ChainListener);
    selector.insert(LISTENER_LABEL.into(), listener_name.clone());
    let mut object_labels = labels(
        &platform_name,
        Some(Component::ChainListener),
        &platform.spec.image,
    );
    object_labels.insert(LISTENER_LABEL.into(), listener_name.clone());
    let workload = Workload {
        component: Component::ChainListener,
        args: vec!["chain-listener".into(), "--chain".into(), spec.chain.clone()],
        port_name: "metrics",
        port: METRICS_PORT,
        metrics_port: false,
        env: vars,
        resources: spec.resources.clone(),
        labels: pod_labels,
        mounts,
    };
    Deployment {
        metadata: owned_meta(
            listener,
            chain_listener_deployment_name(&platform_name, &listener_name),
            object_labels,
        ),
        spec: Some(DeploymentSpec {
            // One follower per chain: two would race on the checkpoint.
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
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
