use coffer_domain::asset::AssetCatalog;
use coffer_operator::build::{assets_config_map, select_assets, AssetVerdict, ASSETS_KEY};
use coffer_operator::render::{render_platform, Resources};
use kube::ResourceExt;

use crate::assert_golden;

/// Fixture resources with the uids an API server would have set (owner references need them).
fn fixture(name: &str) -> Resources {
    resources_at(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
}

fn resources_at(path: &std::path::Path) -> Resources {
    let mut resources = Resources::from_yaml(&std::fs::read_to_string(path).unwrap()).unwrap();
    for platform in &mut resources.platforms {
        platform.metadata.uid = Some(format!("uid-walletplatform-{}", platform.name_any()));
    }
    for listener in &mut resources.listeners {
        listener.metadata.uid = Some(format!("uid-chainlistener-{}", listener.name_any()));
    }
    resources
}

fn golden_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

#[test]
fn minimal_platform_renders_the_golden_objects() {
    let resources = fixture("minimal.yaml");
    let rendered = render_platform(&resources.platforms[0], &resources).unwrap();
    assert_golden(&golden_path("minimal.yaml"), &rendered);
}

#[test]
fn full_platform_renders_the_golden_objects() {
    let resources = fixture("full.yaml");
    let rendered = render_platform(&resources.platforms[0], &resources).unwrap();
    assert_golden(&golden_path("full.yaml"), &rendered);
}

#[test]
fn the_production_overlay_platform_renders_whole_and_fenced() {
    let resources = resources_at(&crate::repo_root().join("deploy/overlays/production/platform.yaml"));
    let platform = &resources.platforms[0];
    let selection = select_assets(&resources.assets_of(platform));
    assert!(
        selection.verdicts.values().all(|v| *v == AssetVerdict::Published),
        "{:?}",
        selection.verdicts
    );
    let rendered = render_platform(platform, &resources).unwrap();
    assert!(
        !rendered.contains("# ChainListener"),
        "every listener is started, fenced"
    );
    assert!(rendered.contains("name: wallet-listener-mainnet-egress"));
    assert_golden(&golden_path("production.yaml"), &rendered);
}

#[test]
fn published_assets_file_is_what_the_services_accept() {
    let resources = fixture("minimal.yaml");
    let platform = &resources.platforms[0];
    let selection = select_assets(&resources.assets_of(platform));
    let config_map = assets_config_map(platform, &selection.file);
    let json = &config_map.data.as_ref().unwrap()[ASSETS_KEY];
    let catalog = AssetCatalog::from_json(json).expect("the services accept the operator's file");
    let symbols: Vec<_> = catalog.iter().map(|a| a.symbol.as_str()).collect();
    assert_eq!(symbols, ["ETH", "USDT"]);
    assert_eq!(catalog.get("USDT").unwrap().confirmations_required, 12);
    assert!(!catalog.get("USDT").unwrap().withdrawals_enabled);
    assert_eq!(config_map.name_any(), "coffer-assets");
}

#[test]
fn invalid_and_duplicate_assets_are_refused_with_a_reason() {
    let resources = fixture("minimal.yaml");
    let selection = select_assets(&resources.assets_of(&resources.platforms[0]));
    assert_eq!(selection.verdicts["eth"], AssetVerdict::Published);
    assert_eq!(
        selection.verdicts["eth-again"],
        AssetVerdict::Duplicate {
            symbol: "ETH".into(),
            kept: "eth".into()
        }
    );
    let invalid = &selection.verdicts["usdc"];
    assert_eq!(invalid.reason(), Some("InvalidAsset"));
    assert!(
        invalid.message().contains("withdrawal_min"),
        "{}",
        invalid.message()
    );
    assert_eq!((selection.published(), selection.refused()), (2, 2));
}

#[test]
fn the_assets_file_does_not_depend_on_list_order() {
    let resources = fixture("minimal.yaml");
    let mut assets = resources.assets_of(&resources.platforms[0]);
    let forward = select_assets(&assets);
    assets.reverse();
    assert_eq!(select_assets(&assets), forward);
}

#[test]
fn workloads_mount_the_assets_directory_and_never_hash_it() {
    let resources = fixture("minimal.yaml");
    let rendered = render_platform(&resources.platforms[0], &resources).unwrap();
    assert!(rendered.contains("mountPath: /etc/coffer\n"));
    assert!(rendered.contains("value: /etc/coffer/assets.json"));
    // A subPath mount is never updated by kubelet, and a checksum annotation would restart pods.
    assert!(!rendered.contains("subPath"));
    assert!(!rendered.to_lowercase().contains("checksum"));
}

/// The Deployments of a rendered platform, by container name.
fn deployments(rendered: &str) -> std::collections::BTreeMap<String, serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(rendered)
        .map(|document| serde_yaml::Value::deserialize(document).unwrap())
        .filter(|object| object["kind"] == "Deployment")
        .map(|object| {
            let container = object["spec"]["template"]["spec"]["containers"][0].clone();
            (container["name"].as_str().unwrap().to_string(), object)
        })
        .collect()
}

fn env_names(deployment: &serde_yaml::Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|var| var["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_pii_keys_reach_the_api_alone_and_only_from_a_secret() {
    for fixture_name in ["minimal.yaml", "full.yaml"] {
        let resources = fixture(fixture_name);
        let rendered = render_platform(&resources.platforms[0], &resources).unwrap();
        for (name, deployment) in deployments(&rendered) {
            let vars = deployment["spec"]["template"]["spec"]["containers"][0]["env"].clone();
            let pii: Vec<&serde_yaml::Value> = vars
                .as_sequence()
                .unwrap()
                .iter()
                .filter(|var| var["name"].as_str().unwrap().starts_with("COFFER_PII_"))
                .collect();
            if name != "api" {
                assert!(pii.is_empty(), "{fixture_name}: {name} gets PII keys");
                continue;
            }
            assert_eq!(pii.len(), 3, "{fixture_name}: key, index key, previous keys");
            for var in pii {
                assert!(var.get("value").is_none(), "{fixture_name}: a literal PII key");
                let reference = &var["valueFrom"]["secretKeyRef"];
                assert_eq!(
                    reference["name"],
                    resources.platforms[0].spec.pii_keys_secret_ref.name.as_str()
                );
            }
        }
    }
}

#[test]
fn the_reconciler_alone_mounts_the_audit_heads_export_on_its_claim_or_an_empty_dir() {
    for (fixture_name, claim) in [("minimal.yaml", None), ("full.yaml", Some("coffer-audit-heads"))] {
        let resources = fixture(fixture_name);
        let rendered = render_platform(&resources.platforms[0], &resources).unwrap();
        for (name, deployment) in deployments(&rendered) {
            let pod = &deployment["spec"]["template"]["spec"];
            let volume = pod["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "audit-heads");
            let exports = env_names(&deployment).contains(&"COFFER_AUDIT_HEADS_PATH".to_string());
            if name != "reconciler" {
                assert!(
                    volume.is_none() && !exports,
                    "{fixture_name}: {name} has the export"
                );
                continue;
            }
            let volume = volume.expect("the reconciler's export volume");
            match claim {
                Some(claim) => assert_eq!(volume["persistentVolumeClaim"]["claimName"], claim),
                None => assert!(volume.get("emptyDir").is_some(), "{volume:?}"),
            }
            let mount = pod["containers"][0]["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|m| m["name"] == "audit-heads")
                .expect("mounted")
                .clone();
            let path = pod["containers"][0]["env"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "COFFER_AUDIT_HEADS_PATH")
                .unwrap()["value"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(
                path.starts_with(&format!("{}/", mount["mountPath"].as_str().unwrap())),
                "{path}"
            );
        }
    }
}

#[test]
fn the_api_and_the_reconciler_reach_each_listeners_node_through_its_secret_only() {
    let resources = fixture("full.yaml");
    let platform = &resources.platforms[0];
    let rendered = render_platform(platform, &resources).unwrap();
    let deployments: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|doc: &serde_yaml::Value| doc["kind"] == "Deployment")
        .collect();
    let env_of = |component: &str| -> Vec<serde_yaml::Value> {
        let deployment = deployments
            .iter()
            .find(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == component)
            .unwrap_or_else(|| panic!("no {component} Deployment"));
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_sequence()
            .unwrap()
            .clone()
    };
    for component in ["api", "reconciler"] {
        let env = env_of(component);
        let named = |name: &str| env.iter().find(|v| v["name"] == name).cloned();
        let url = named("COFFER_RPC_URL_0").unwrap_or_else(|| panic!("{component}: no node"));
        assert_eq!(
            url["valueFrom"]["secretKeyRef"]["name"], "eth-mainnet-rpc",
            "{component}"
        );
        assert_eq!(url["valueFrom"]["secretKeyRef"]["key"], "https", "{component}");
        assert!(
            url.get("value").is_none(),
            "{component}: the URL never appears in the Deployment"
        );
        let urls = named("COFFER_CHAIN_RPC_URLS").unwrap();
        assert_eq!(urls["value"], "ethereum=$(COFFER_RPC_URL_0)", "{component}");
        // Kubernetes expands $(VAR) only from variables defined before it.
        let position = |name: &str| env.iter().position(|v| v["name"] == name).unwrap();
        assert!(position("COFFER_RPC_URL_0") < position("COFFER_CHAIN_RPC_URLS"));
    }
    let outbox = env_of("outbox-publisher");
    assert!(outbox.iter().all(|v| v["name"] != "COFFER_CHAIN_RPC_URLS"));
}

#[test]
fn the_deposit_xprv_reaches_the_sweeping_listener_alone_and_only_as_a_file() {
    let resources = fixture("full.yaml");
    let rendered = render_platform(&resources.platforms[0], &resources).unwrap();
    let sweep = resources.listeners[0]
        .spec
        .sweep
        .as_ref()
        .expect("full.yaml sweeps");
    let xprv_secret = sweep.deposit_key_secret_ref.name.as_str();
    for (name, deployment) in deployments(&rendered) {
        let pod = &deployment["spec"]["template"]["spec"];
        let vars = pod["containers"][0]["env"].as_sequence().unwrap();
        assert!(
            vars.iter()
                .all(|var| var["valueFrom"]["secretKeyRef"]["name"] != xprv_secret),
            "{name}: the xprv in an environment variable"
        );
        let volume = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["secret"]["secretName"] == xprv_secret);
        let sweeps = env_names(&deployment).contains(&"COFFER_DEPOSIT_XPRV_FILE".to_string());
        if name != "chain-listener" {
            assert!(volume.is_none() && !sweeps, "{name} gets the deposit key");
            continue;
        }
        let volume = volume.expect("the listener mounts the deposit key");
        assert_eq!(volume["secret"]["defaultMode"], 0o400);
        assert!(sweeps);
    }
}

#[test]
fn a_listener_sweeping_without_a_signer_is_rendered_as_refused() {
    let mut resources = fixture("full.yaml");
    resources.listeners[0].spec.signer_secret_ref = None;
    let rendered = render_platform(&resources.platforms[0], &resources).unwrap();
    assert!(
        rendered.contains("# ChainListener mainnet: sweep requires signerSecretRef"),
        "{rendered}"
    );
    assert!(!deployments(&rendered).contains_key("chain-listener"));
    assert!(!rendered.contains("deposit-key"));
}
