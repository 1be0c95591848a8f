use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{KeyToPath, SecretVolumeSource, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::pod::{common_env, env, pod_template, secret_env, Workload};
use super::{labels, owned_meta, selector_labels, Component, LISTENER_LABEL, METRICS_LABEL, METRICS_PORT};
use crate::crd::{ChainListener, SecretKeyRef, WalletPlatform};

/// Where the signer's key file is mounted (read-only, owner-only).
const SIGNER_DIR: &str = "/var/run/coffer/signer";
/// Where the deposit addresses' xprv file is mounted (read-only, owner-only).
const DEPOSIT_KEY_DIR: &str = "/var/run/coffer/deposit-key";
/// The key of the deposit xprv Secret when `depositKeySecretRef` names none.
pub const DEPOSIT_KEY_DEFAULT_KEY: &str = "xprv";

/// The signer key Secret as a read-only file `key` (mode 0400), never an environment variable.
fn signer_volume(secret: &SecretKeyRef) -> (Volume, VolumeMount) {
    secret_file_volume("signer", SIGNER_DIR, secret, "key", "key")
}

/// Key `default_key` (or the reference's) of a Secret as the read-only file `dir/file` (mode
/// 0400) in the volume `name`.
fn secret_file_volume(
    name: &str,
    dir: &str,
    secret: &SecretKeyRef,
    default_key: &str,
    file: &str,
) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.name.clone()),
            items: Some(vec![KeyToPath {
                key: secret.key_or(default_key).to_string(),
                path: file.into(),
                mode: None,
            }]),
            default_mode: Some(0o400),
            optional: Some(false),
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: name.into(),
        mount_path: dir.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    (volume, mount)
}

/// The rules of a ChainListener's spec the schema's CEL rules also state, checked again here
/// (a CRD installed before a rule, or a server without CEL, lets such a spec through).
pub fn validate_listener(listener: &ChainListener) -> Result<(), String> {
    let spec = &listener.spec;
    if spec.sweep.is_some() && spec.signer_secret_ref.is_none() {
        return Err("sweep requires signerSecretRef: sweeps go to that hot wallet".into());
    }
    Ok(())
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
        // Without a signer there is no hot wallet to sweep to (validate_listener refuses it):
        // the deposit key is never mounted then.
        if let Some(sweep) = &spec.sweep {
            vars.push(env("COFFER_DEPOSIT_XPRV_FILE", format!("{DEPOSIT_KEY_DIR}/xprv")));
            mounts.push(secret_file_volume(
                "deposit-key",
                DEPOSIT_KEY_DIR,
                &sweep.deposit_key_secret_ref,
                DEPOSIT_KEY_DEFAULT_KEY,
                "xprv",
            ));
            vars.push(env("COFFER_DEPOSIT_XPUB", sweep.deposit_xpub.clone()));
            if let Some(amount) = &sweep.min_amount {
                vars.push(env("COFFER_SWEEP_MIN_AMOUNT", amount.clone()));
            }
            if let Some(amount) = &sweep.token_min_amount {
                vars.push(env("COFFER_SWEEP_TOKEN_MIN_AMOUNT", amount.clone()));
            }
            if let Some(batch) = sweep.batch_max {
                vars.push(env("COFFER_SWEEP_BATCH_MAX", batch.to_string()));
            }
            if let Some(gwei) = sweep.gas_price_ceiling_gwei {
                vars.push(env("COFFER_SWEEP_GAS_PRICE_CEILING_GWEI", gwei.to_string()));
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
