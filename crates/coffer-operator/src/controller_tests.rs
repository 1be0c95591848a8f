//! The controller against an in-memory API server ([`crate::fake_api`]): each test is one
//! scenario and asserts the calls made, in order, and what ends up stored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use coffer_domain::asset::AssetCatalog;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::ByteString;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::ResourceExt;
use serde_json::Value;

use super::{error_policy, reconcile, Context, FINALIZER};
use crate::crd::{AutoscalingSpec, WalletPlatform};
use crate::error::Error;
use crate::fake_api::{Call, FakeApi};
use crate::metrics::Metrics;
use crate::render::Resources;

const PLATFORM: &str = "/apis/coffer.dev/v1alpha1/namespaces/wallet/walletplatforms/coffer";
const ASSETS: &str = "/apis/coffer.dev/v1alpha1/namespaces/wallet/assets";
const LISTENERS: &str = "/apis/coffer.dev/v1alpha1/namespaces/wallet/chainlisteners";
const SECRETS: &str = "/api/v1/namespaces/wallet/secrets";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/wallet/deployments";
const CONFIGMAP: &str = "/api/v1/namespaces/wallet/configmaps/coffer-assets";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/wallet/events";

fn secret(name: &str, key: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("wallet".into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(b"not-a-real-value".to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The minimal fixture stored in the fake server: a finalized platform, four Assets (one invalid,
/// one duplicate), a ChainListener, and every Secret they reference.
pub(crate) fn cluster() -> FakeApi {
    let mut resources = Resources::from_yaml(include_str!("../tests/fixtures/minimal.yaml")).unwrap();
    let mut api = FakeApi::default();
    for platform in &mut resources.platforms {
        platform.metadata.uid = Some("uid-platform".into());
        platform.metadata.finalizers = Some(vec![FINALIZER.into()]);
        api.put(platform);
    }
    for asset in &resources.assets {
        api.put(asset);
    }
    for listener in &mut resources.listeners {
        listener.metadata.uid = Some("uid-listener".into());
        api.put(listener);
    }
    for (name, key) in [
        ("coffer-mongodb", "uri"),
        ("coffer-rabbitmq", "uri"),
        ("coffer-jwt", "secret"),
        ("coffer-audit", "key"),
        ("coffer-eth-rpc", "url"),
    ] {
        api.put(&secret(name, key));
    }
    let mut pii = secret("coffer-pii", "key");
    pii.data
        .get_or_insert_with(Default::default)
        .insert("index-key".into(), ByteString(b"not-a-real-value".to_vec()));
    api.put(&pii);
    api
}

fn platform_in(api: &FakeApi) -> WalletPlatform {
    serde_json::from_value(api.get(PLATFORM).expect("platform stored").clone()).unwrap()
}

pub(crate) fn context(client: kube::Client) -> Arc<Context> {
    let reporter = Reporter {
        controller: "coffer-operator-test".into(),
        instance: None,
    };
    Arc::new(Context::new(
        client.clone(),
        Recorder::new(client, reporter),
        Arc::new(Metrics::default()),
    ))
}

/// Runs one reconcile of `platform` against `api`; returns the result, the calls made and the
/// server's state. Also runs the error policy on failure, as the controller would.
async fn reconcile_once(
    api: FakeApi,
    platform: WalletPlatform,
) -> (Result<Action, Error>, Option<Action>, FakeApi) {
    let calls_before = api.calls.len();
    let (client, server) = api.start();
    let ctx = context(client);
    let platform = Arc::new(platform);
    let result = reconcile(platform.clone(), ctx.clone()).await;
    let retry = result
        .as_ref()
        .err()
        .map(|e| error_policy(platform, e, ctx.clone()));
    drop(ctx);
    let mut api = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops")
        .unwrap();
    api.calls.drain(..calls_before);
    (result, retry, api)
}

fn lines(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::line).collect()
}

fn status_of<'a>(api: &'a FakeApi, path: &str) -> &'a Value {
    &api.get(path).unwrap_or_else(|| panic!("{path} stored"))["status"]
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("condition {type_} in {status}"))
}

/// Asserts the Degraded condition of `status` has `reason` and a message mentioning `mention`.
fn assert_degraded(status: &Value, reason: &str, mention: &str) {
    let degraded = condition(status, "Degraded");
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some(reason)),
        "{degraded}"
    );
    let message = degraded["message"].as_str().unwrap_or_default();
    assert!(message.contains(mention), "{mention:?} not in {message:?}");
}

fn applied_kinds(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| {
            c.method == "PATCH" && c.content_type.contains("apply-patch") && !c.path.ends_with("/status")
        })
        .map(|c| {
            c.path
                .rsplit('/')
                .take(2)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect()
}

#[tokio::test]
async fn a_new_platform_first_gets_the_finalizer() {
    let mut api = cluster();
    let mut platform = platform_in(&api);
    platform.metadata.finalizers = None;
    api.put(&platform);
    let (result, _, api) = reconcile_once(api, platform).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(lines(&api.calls), [format!("PATCH {PLATFORM}")]);
    assert!(api.calls[0].content_type.contains("json-patch"));
    assert_eq!(api.get(PLATFORM).unwrap()["metadata"]["finalizers"][0], FINALIZER);
}

#[tokio::test]
async fn creation_applies_every_object_then_reports_status() {
    let api = cluster();
    let platform = platform_in(&api);
    let (result, _, api) = reconcile_once(api, platform).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));

    let expected_reads = [
        format!("GET {ASSETS}"),
        format!("GET {LISTENERS}"),
        format!("GET {SECRETS}/coffer-eth-rpc"),
        format!("GET {SECRETS}/coffer-mongodb"),
        format!("GET {SECRETS}/coffer-rabbitmq"),
        format!("GET {SECRETS}/coffer-jwt"),
        format!("GET {SECRETS}/coffer-audit"),
        format!("GET {SECRETS}/coffer-pii"),
        format!("GET {SECRETS}/coffer-pii"),
    ];
    assert_eq!(lines(&api.calls[..9]), expected_reads);
    assert_eq!(
        applied_kinds(&api.calls),
        [
            "configmaps/coffer-assets",
            "serviceaccounts/coffer",
            "roles/coffer",
            "rolebindings/coffer",
            "services/coffer-api",
            "services/coffer-metrics",
            "deployments/coffer-api",
            "deployments/coffer-outbox-publisher",
            "deployments/coffer-reconciler",
            "poddisruptionbudgets/coffer-api",
            "deployments/coffer-listener-ethereum",
        ]
    );
    for call in api
        .calls
        .iter()
        .filter(|c| c.method == "PATCH" && c.content_type.contains("apply-patch"))
    {
        assert!(
            call.query.contains("fieldManager=coffer-operator") && call.query.contains("force=true"),
            "{call:?}"
        );
    }
    let status_patches: Vec<_> = api
        .calls
        .iter()
        .filter(|c| c.path.ends_with("/status"))
        .map(Call::line)
        .collect();
    assert_eq!(
        status_patches,
        [
            format!("PATCH {ASSETS}/eth/status"),
            format!("PATCH {ASSETS}/eth-again/status"),
            format!("PATCH {ASSETS}/usdc/status"),
            format!("PATCH {ASSETS}/usdt/status"),
            format!("PATCH {LISTENERS}/ethereum/status"),
            format!("PATCH {PLATFORM}/status"),
        ]
    );

    let published = api.get(CONFIGMAP).unwrap()["data"]["assets.json"]
        .as_str()
        .unwrap();
    let catalog = AssetCatalog::from_json(published).expect("the services accept the published file");
    assert_eq!(
        catalog.iter().map(|a| a.symbol.as_str()).collect::<Vec<_>>(),
        ["ETH", "USDT"]
    );

    let status = status_of(&api, PLATFORM);
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(
        (status["assets"].as_i64(), status["invalidAssets"].as_i64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        condition(status, "Ready")["reason"],
        "Starting",
        "deployments are not available yet"
    );
    assert_eq!(condition(status, "Progressing")["status"], "True");
    assert_eq!(condition(status, "Degraded")["status"], "False");

    let eth = status_of(&api, &format!("{ASSETS}/eth"));
    assert_eq!(
        (eth["inUse"].as_bool(), &condition(eth, "Ready")["status"]),
        (Some(true), &Value::from("True"))
    );
    let usdc = status_of(&api, &format!("{ASSETS}/usdc"));
    assert_eq!(condition(usdc, "Degraded")["reason"], "InvalidAsset");
    assert!(condition(usdc, "Degraded")["message"]
        .as_str()
        .unwrap()
        .contains("withdrawal_min"));
    assert_eq!(usdc["inUse"], false);
    let duplicate = status_of(&api, &format!("{ASSETS}/eth-again"));
    assert_eq!(condition(duplicate, "Degraded")["reason"], "DuplicateSymbol");
}

#[tokio::test]
async fn a_spec_change_updates_the_objects_and_asset_changes_do_not_restart_pods() {
    let mut api = cluster();
    api.deployments_available = true;
    let (first, _, mut api) = reconcile_once(api, platform_in(&cluster())).await;
    first.unwrap();
    let api_deployment = format!("{DEPLOYMENTS}/coffer-api");
    let template_before = api.get(&api_deployment).unwrap()["spec"]["template"].clone();
    assert_eq!(
        condition(status_of(&api, PLATFORM), "Ready")["reason"],
        "Available"
    );

    let mut platform = platform_in(&api);
    platform.spec.api.replicas = 5;
    platform.metadata.generation = Some(2);
    api.put(&platform);
    let eth_path = format!("{ASSETS}/eth");
    api.objects.get_mut(&eth_path).unwrap()["spec"]["confirmationsRequired"] = 12.into();
    let (second, _, api) = reconcile_once(api, platform).await;
    second.unwrap();

    let deployment = api.get(&api_deployment).unwrap();
    assert_eq!(deployment["spec"]["replicas"], 5);
    assert_eq!(
        deployment["spec"]["template"], template_before,
        "the pod template (no config hash) is unchanged"
    );
    let catalog = AssetCatalog::from_json(
        api.get(CONFIGMAP).unwrap()["data"]["assets.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(catalog.get("ETH").unwrap().confirmations_required, 12);
    assert_eq!(status_of(&api, PLATFORM)["observedGeneration"], 2);

    // Nothing changed since: objects are re-applied (idempotent), no status is re-written.
    let platform = platform_in(&api);
    let (third, _, api) = reconcile_once(api, platform).await;
    third.unwrap();
    assert!(
        api.calls.iter().all(|c| !c.path.ends_with("/status")),
        "{:?}",
        lines(&api.calls)
    );
}

#[tokio::test]
async fn a_missing_secret_degrades_the_platform_with_a_reason_and_backs_off() {
    let mut api = cluster();
    api.objects.remove(&format!("{SECRETS}/coffer-jwt"));
    let platform = platform_in(&api);
    let (result, retry, api) = reconcile_once(api, platform).await;
    let error = result.unwrap_err();
    assert_eq!(error.reason(), "SecretMissing");
    assert!(error.to_string().contains("coffer-jwt"), "{error}");
    assert_eq!(retry, Some(Action::requeue(Duration::from_secs(5))));
    assert!(
        applied_kinds(&api.calls).is_empty(),
        "nothing is applied: {:?}",
        applied_kinds(&api.calls)
    );
    let event = api
        .calls
        .iter()
        .find(|c| c.path == EVENTS)
        .expect("a Warning event");
    assert_eq!(
        (event.body["type"].as_str(), event.body["reason"].as_str()),
        (Some("Warning"), Some("SecretMissing"))
    );
    let status = status_of(&api, PLATFORM);
    assert_eq!(condition(status, "Degraded")["status"], "True");
    assert_eq!(condition(status, "Degraded")["reason"], "SecretMissing");
    assert_eq!(condition(status, "Ready")["status"], "False");
    let eth = status_of(&api, &format!("{ASSETS}/eth"));
    assert_eq!(condition(eth, "Progressing")["reason"], "SecretMissing");
}

#[tokio::test]
async fn a_secret_the_operator_may_not_read_degrades_the_platform_and_names_the_chart_value() {
    let mut api = cluster();
    api.forbidden.push(format!("{SECRETS}/coffer-rabbitmq"));
    let platform = platform_in(&api);
    let (result, retry, api) = reconcile_once(api, platform).await;
    let error = result.unwrap_err();
    assert_eq!(error.reason(), "SecretForbidden");
    assert!(error.is_user_error());
    assert!(retry.is_some());
    assert!(applied_kinds(&api.calls).is_empty());
    assert_degraded(
        status_of(&api, PLATFORM),
        "SecretForbidden",
        "wallet/coffer-rabbitmq",
    );
    assert_degraded(status_of(&api, PLATFORM), "SecretForbidden", "watch.secrets");
}

#[tokio::test]
async fn backoff_doubles_up_to_five_minutes() {
    let (client, _server) = FakeApi::default().start();
    let ctx = context(client);
    let delays: Vec<_> = (0..9)
        .map(|_| ctx.next_backoff("wallet/coffer").as_secs())
        .collect();
    assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    ctx.reset_failures("wallet/coffer");
    assert_eq!(ctx.next_backoff("wallet/coffer").as_secs(), 5);
}

#[tokio::test]
async fn an_invalid_spec_degrades_the_platform_without_panicking() {
    let mut api = cluster();
    let mut platform = platform_in(&api);
    platform.spec.api.autoscaling = Some(AutoscalingSpec {
        min_replicas: 5,
        max_replicas: 2,
        target_cpu_utilization_percentage: 70,
    });
    api.put(&platform);
    let (result, retry, api) = reconcile_once(api, platform).await;
    assert_eq!(result.unwrap_err().reason(), "InvalidSpec");
    assert!(retry.is_some());
    assert!(applied_kinds(&api.calls).is_empty());
    let degraded = condition(status_of(&api, PLATFORM), "Degraded").clone();
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("InvalidSpec"))
    );
    assert!(degraded["message"].as_str().unwrap().contains("minReplicas"));
}

#[tokio::test]
async fn a_listener_without_its_secret_is_degraded_alone() {
    let mut api = cluster();
    api.objects.remove(&format!("{SECRETS}/coffer-eth-rpc"));
    let platform = platform_in(&api);
    let (result, _, api) = reconcile_once(api, platform).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(30)));
    assert!(!applied_kinds(&api.calls).contains(&"deployments/coffer-listener-ethereum".to_string()));
    assert!(applied_kinds(&api.calls).contains(&"deployments/coffer-api".to_string()));
    let listener = status_of(&api, &format!("{LISTENERS}/ethereum"));
    assert_eq!(condition(listener, "Degraded")["reason"], "SecretMissing");
    assert_eq!(
        condition(status_of(&api, PLATFORM), "Degraded")["status"],
        "False"
    );
    assert_eq!(status_of(&api, PLATFORM)["chainListeners"], 0);
}

#[tokio::test]
async fn a_listener_whose_signer_secret_is_missing_is_degraded_and_gets_no_deployment() {
    let mut api = cluster();
    let path = format!("{LISTENERS}/ethereum");
    let mut listener: crate::crd::ChainListener = serde_json::from_value(api.objects[&path].clone()).unwrap();
    listener.spec.signer_secret_ref = Some(crate::crd::SecretKeyRef {
        name: "hot-wallet".into(),
        key: None,
    });
    api.put(&listener);
    let platform = platform_in(&api);
    let (_, _, api) = reconcile_once(api, platform).await;
    assert!(!applied_kinds(&api.calls).contains(&"deployments/coffer-listener-ethereum".to_string()));
    assert_degraded(status_of(&api, &path), "SecretMissing", "hot-wallet");

    // With the Secret present the Deployment mounts it as a file, never as an environment value.
    let mut api = api;
    api.calls.clear();
    api.put(&secret("hot-wallet", "key"));
    let platform = platform_in(&api);
    let (_, _, api) = reconcile_once(api, platform).await;
    let deployment = &api.objects[&format!("{DEPLOYMENTS}/coffer-listener-ethereum")];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let env = container["env"].as_array().unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"] == "COFFER_SIGNER_KEY_FILE" && e["value"] == "/var/run/coffer/signer/key"));
    assert!(env
        .iter()
        .all(|e| e["valueFrom"]["secretKeyRef"]["name"] != "hot-wallet"));
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let signer = volumes.iter().find(|v| v["name"] == "signer").unwrap();
    assert_eq!(signer["secret"]["secretName"], "hot-wallet");
    assert_eq!(signer["secret"]["defaultMode"], 0o400);
}

#[tokio::test]
async fn a_listener_with_a_signer_gets_its_replacement_policy_and_one_without_gets_none() {
    let mut api = cluster();
    let path = format!("{LISTENERS}/ethereum");
    let mut listener: crate::crd::ChainListener = serde_json::from_value(api.objects[&path].clone()).unwrap();
    listener.spec.replacement = Some(crate::crd::ReplacementSpec {
        after_seconds: Some(120),
        max_fee_per_gas_cap_gwei: Some(80),
    });
    api.put(&listener);
    let env_names = |api: &FakeApi| -> Vec<(String, String)> {
        let deployment = &api.objects[&format!("{DEPLOYMENTS}/coffer-listener-ethereum")];
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["name"].as_str().unwrap().contains("REPLACE")
                    || e["name"].as_str().unwrap().contains("FEE_PER_GAS")
            })
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["value"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let platform = platform_in(&api);
    let (_, _, api) = reconcile_once(api, platform).await;
    assert!(
        env_names(&api).is_empty(),
        "no broadcaster without a signer: no policy"
    );

    let mut api = api;
    listener.spec.signer_secret_ref = Some(crate::crd::SecretKeyRef {
        name: "hot-wallet".into(),
        key: None,
    });
    api.put(&listener);
    api.put(&secret("hot-wallet", "key"));
    let platform = platform_in(&api);
    let (_, _, api) = reconcile_once(api, platform).await;
    assert_eq!(
        env_names(&api),
        vec![
            (
                "COFFER_WITHDRAWAL_REPLACE_AFTER_SECONDS".to_string(),
                "120".to_string()
            ),
            ("COFFER_MAX_FEE_PER_GAS_CAP_GWEI".to_string(), "80".to_string()),
        ]
    );
}

/// A public BIP32 test vector (the master key of vector 1): the schema's xpub shape.
const TEST_XPUB: &str =
    "xpub661MyMwAqRbcFtXgS5sYJABqqG9YLmC4Q1Rdap9gSE8NqtwybGhePY2gZ29ESFjqJoCu1Rupje8YtGqsefD265TMg7usUDFdp6W1EGMcet8";
/// What the deposit key Secret holds in these tests: must never leave the Secret.
const XPRV_VALUE: &[u8] = b"xprv-this-value-must-stay-in-its-secret";

fn sweep_spec() -> crate::crd::SweepSpec {
    crate::crd::SweepSpec {
        deposit_key_secret_ref: crate::crd::SecretKeyRef {
            name: "deposit-xprv".into(),
            key: None,
        },
        deposit_xpub: TEST_XPUB.into(),
        min_amount: Some("0.02".into()),
        token_min_amount: Some("15".into()),
        batch_max: Some(200),
        gas_price_ceiling_gwei: Some(70),
    }
}

/// The stored listener `ethereum` with a signer (whose Secret exists) and `sweep`.
fn sweeping_cluster() -> FakeApi {
    let mut api = cluster();
    api.put(&secret("hot-wallet", "key"));
    change_listener(&mut api, |l| {
        l.spec.signer_secret_ref = Some(crate::crd::SecretKeyRef {
            name: "hot-wallet".into(),
            key: None,
        });
        l.spec.sweep = Some(sweep_spec());
    });
    api
}

fn listener_deployment(api: &FakeApi) -> &Value {
    &api.objects[&format!("{DEPLOYMENTS}/coffer-listener-ethereum")]
}

#[tokio::test]
async fn a_sweeping_listener_mounts_the_deposit_xprv_as_a_file_and_gets_the_sweep_policy() {
    let mut api = sweeping_cluster();
    let mut xprv = secret("deposit-xprv", "xprv");
    xprv.data = Some(BTreeMap::from([(
        "xprv".to_string(),
        ByteString(XPRV_VALUE.to_vec()),
    )]));
    api.put(&xprv);
    let platform = platform_in(&api);
    let (result, _, api) = reconcile_once(api, platform).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
    assert!(lines(&api.calls).contains(&format!("GET {SECRETS}/deposit-xprv")));

    let pod = &listener_deployment(&api)["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    let value = |name: &str| {
        env[name]["value"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has a value"))
    };
    assert_eq!(
        value("COFFER_DEPOSIT_XPRV_FILE"),
        "/var/run/coffer/deposit-key/xprv"
    );
    assert_eq!(value("COFFER_DEPOSIT_XPUB"), TEST_XPUB);
    assert_eq!(value("COFFER_SWEEP_MIN_AMOUNT"), "0.02");
    assert_eq!(value("COFFER_SWEEP_TOKEN_MIN_AMOUNT"), "15");
    assert_eq!(value("COFFER_SWEEP_BATCH_MAX"), "200");
    assert_eq!(value("COFFER_SWEEP_GAS_PRICE_CEILING_GWEI"), "70");
    assert_eq!(value("COFFER_SIGNER_KEY_FILE"), "/var/run/coffer/signer/key");
    assert!(
        env.values()
            .all(|e| e["valueFrom"]["secretKeyRef"]["name"] != "deposit-xprv"),
        "the xprv is never an environment variable"
    );

    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "deposit-key")
        .expect("the deposit key volume");
    assert_eq!(volume["secret"]["secretName"], "deposit-xprv");
    assert_eq!(volume["secret"]["defaultMode"], 0o400);
    assert_eq!(volume["secret"]["optional"], false);
    assert_eq!(
        volume["secret"]["items"],
        serde_json::json!([{ "key": "xprv", "path": "xprv" }]),
        "the key defaults to `xprv`, the file is `xprv`"
    );
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "deposit-key")
        .expect("the deposit key mount");
    assert_eq!(mount["mountPath"], "/var/run/coffer/deposit-key");
    assert_eq!(mount["readOnly"], true);
    assert!(
        value("COFFER_DEPOSIT_XPRV_FILE").starts_with(&format!("{}/", mount["mountPath"].as_str().unwrap())),
        "the file is in the mount"
    );

    // The value is nowhere but in its Secret: not in a stored object, not in anything written.
    let needles = [
        String::from_utf8(XPRV_VALUE.to_vec()).unwrap(),
        serde_json::to_value(ByteString(XPRV_VALUE.to_vec()))
            .unwrap()
            .as_str()
            .unwrap()
            .to_string(),
    ];
    let stored_secret = api.objects[&format!("{SECRETS}/deposit-xprv")].to_string();
    assert!(
        stored_secret.contains(needles[1].as_str()),
        "the search finds it where it is"
    );
    for (path, object) in &api.objects {
        if path == &format!("{SECRETS}/deposit-xprv") {
            continue;
        }
        let text = object.to_string();
        for needle in &needles {
            assert!(!text.contains(needle.as_str()), "the xprv is in {path}");
        }
    }
    for call in &api.calls {
        let text = call.body.to_string();
        for needle in &needles {
            assert!(!text.contains(needle.as_str()), "the xprv is in {}", call.line());
        }
    }
    assert_eq!(
        condition(status_of(&api, &format!("{LISTENERS}/ethereum")), "Degraded")["status"],
        "False"
    );
}

#[tokio::test]
async fn a_sweeping_listener_whose_xprv_secret_is_missing_is_degraded_and_gets_no_deployment() {
    let api = sweeping_cluster();
    let platform = platform_in(&api);
    let (result, _, api) = reconcile_once(api, platform).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(30)));
    let path = format!("{LISTENERS}/ethereum");
    assert_degraded(status_of(&api, &path), "SecretMissing", "deposit-xprv");
    assert_eq!(
        condition(status_of(&api, &path), "Progressing")["message"],
        "waiting for the Secret"
    );
    assert!(!applied_kinds(&api.calls).contains(&"deployments/coffer-listener-ethereum".to_string()));
    assert!(!api
        .objects
        .contains_key(&format!("{DEPLOYMENTS}/coffer-listener-ethereum")));
    assert!(applied_kinds(&api.calls).contains(&"deployments/coffer-api".to_string()));
    assert_eq!(status_of(&api, PLATFORM)["chainListeners"], 0);

    // The Secret without the key (it defaults to `xprv`): still no Deployment, the key named.
    let mut api = api;
    api.calls.clear();
    api.put(&secret("deposit-xprv", "key"));
    let platform = platform_in(&api);
    let (_, _, api) = reconcile_once(api, platform).await;
    assert_degraded(status_of(&api, &path), "SecretKeyMissing", "\"xprv\"");
    assert!(!api
        .objects
        .contains_key(&format!("{DEPLOYMENTS}/coffer-listener-ethereum")));
}

#[tokio::test]
async fn sweep_without_a_signer_is_refused_as_an_invalid_spec_before_any_secret_is_read() {
    let mut api = cluster();
    api.put(&secret("deposit-xprv", "xprv"));
    change_listener(&mut api, |l| l.spec.sweep = Some(sweep_spec()));
    let platform = platform_in(&api);
    let (result, _, api) = reconcile_once(api, platform).await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(30)));
    let path = format!("{LISTENERS}/ethereum");
    assert_degraded(
        status_of(&api, &path),
        "InvalidSpec",
        "sweep requires signerSecretRef",
    );
    assert_eq!(condition(status_of(&api, &path), "Ready")["status"], "False");
    assert_eq!(
        condition(status_of(&api, &path), "Progressing")["message"],
        "waiting for the ChainListener to be fixed"
    );
    assert!(!lines(&api.calls).contains(&format!("GET {SECRETS}/deposit-xprv")));
    assert!(!lines(&api.calls).contains(&format!("GET {SECRETS}/coffer-eth-rpc")));
    assert!(!api
        .objects
        .contains_key(&format!("{DEPLOYMENTS}/coffer-listener-ethereum")));
    // The platform itself is fine: the listener is refused alone.
    assert_eq!(
        condition(status_of(&api, PLATFORM), "Degraded")["status"],
        "False"
    );
    assert_eq!(status_of(&api, PLATFORM)["chainListeners"], 0);
}

#[tokio::test]
async fn a_paused_platform_applies_nothing_but_keeps_status_current() {
    let mut api = cluster();
    let mut platform = platform_in(&api);
    platform.spec.paused = true;
    api.put(&platform);
    let (result, _, api) = reconcile_once(api, platform).await;
    result.unwrap();
    assert!(
        applied_kinds(&api.calls).is_empty(),
        "{:?}",
        applied_kinds(&api.calls)
    );
    let status = status_of(&api, PLATFORM);
    assert_eq!(condition(status, "Progressing")["reason"], "Paused");
    assert_eq!(status["invalidAssets"], 2);
    assert_eq!(
        condition(status_of(&api, &format!("{ASSETS}/eth")), "Progressing")["reason"],
        "PlatformPaused"
    );
    assert_eq!(
        condition(status_of(&api, &format!("{ASSETS}/usdc")), "Degraded")["reason"],
        "InvalidAsset"
    );
}

#[tokio::test]
async fn deletion_runs_the_finalizer_cleanup() {
    let mut api = cluster();
    api.deployments_available = true;
    let (first, _, mut api) = reconcile_once(api, platform_in(&cluster())).await;
    first.unwrap();
    let listener_deployment = format!("{DEPLOYMENTS}/coffer-listener-ethereum");
    assert!(api.get(&listener_deployment).is_some());

    let mut platform = platform_in(&api);
    platform.metadata.deletion_timestamp = Some(Time("2026-01-01T12:00:00Z".parse().unwrap()));
    api.put(&platform);
    let (result, _, api) = reconcile_once(api, platform).await;
    assert_eq!(result.unwrap(), Action::await_change());
    let calls = lines(&api.calls);
    assert!(
        calls.contains(&format!("DELETE {listener_deployment}")),
        "{calls:?}"
    );
    assert!(api.get(&listener_deployment).is_none());
    let eth = status_of(&api, &format!("{ASSETS}/eth"));
    assert_eq!(
        (eth["inUse"].as_bool(), condition(eth, "Ready")["reason"].as_str()),
        (Some(false), Some("PlatformDeleted"))
    );
    let event = api
        .calls
        .iter()
        .find(|c| c.path == EVENTS)
        .expect("a Normal event");
    assert_eq!(event.body["reason"], "Deleted");
    let last = api.calls.last().unwrap();
    assert_eq!(
        (last.line(), last.content_type.contains("json-patch")),
        (format!("PATCH {PLATFORM}"), true)
    );
    assert_eq!(
        api.get(PLATFORM).unwrap()["metadata"]["finalizers"],
        Value::Array(vec![]),
        "finalizer removed"
    );
}

#[tokio::test]
async fn monitoring_objects_are_applied_only_when_their_crds_exist() {
    for monitoring in [false, true] {
        let mut api = cluster();
        api.monitoring = monitoring;
        let mut platform = platform_in(&api);
        platform.spec.observability.service_monitor = true;
        api.put(&platform);
        let (result, _, api) = reconcile_once(api, platform).await;
        result.unwrap();
        let applied = applied_kinds(&api.calls).contains(&"servicemonitors/coffer".to_string());
        assert_eq!(applied, monitoring);
        let message = condition(status_of(&api, PLATFORM), "Progressing")["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            message.contains("servicemonitors.monitoring.coreos.com is not installed"),
            !monitoring,
            "{message}"
        );
    }
}

#[test]
fn platform_names_are_checked_before_anything_is_applied() {
    let resources = Resources::from_yaml(include_str!("../tests/fixtures/minimal.yaml")).unwrap();
    let mut platform = resources.platforms[0].clone();
    platform.metadata.name = Some("x".repeat(41));
    assert!(crate::build::validate_platform(&platform)
        .unwrap_err()
        .contains("longer than 40"));
    assert_eq!(platform.name_any().len(), 41);
}

const HPA: &str = "/apis/autoscaling/v2/namespaces/wallet/horizontalpodautoscalers/coffer-api";
const SERVICE_MONITOR: &str = "/apis/monitoring.coreos.com/v1/namespaces/wallet/servicemonitors/coffer";
const PROMETHEUS_RULE: &str = "/apis/monitoring.coreos.com/v1/namespaces/wallet/prometheusrules/coffer";

/// Reconciles `platform` (already stored) after `change`, storing the changed platform first.
async fn reconcile_changed(api: FakeApi, change: impl FnOnce(&mut WalletPlatform)) -> FakeApi {
    let mut api = api;
    let mut platform = platform_in(&api);
    change(&mut platform);
    api.put(&platform);
    let (result, _, api) = reconcile_once(api, platform).await;
    result.unwrap();
    api
}

#[tokio::test]
async fn turning_autoscaling_off_deletes_the_autoscaler_and_gives_the_replicas_back() {
    let api = reconcile_changed(cluster(), |p| {
        p.spec.api.autoscaling = Some(AutoscalingSpec {
            min_replicas: 2,
            max_replicas: 6,
            target_cpu_utilization_percentage: 70,
        })
    })
    .await;
    assert!(api.get(HPA).is_some(), "autoscaler applied");
    let api_deployment = format!("{DEPLOYMENTS}/coffer-api");
    assert!(api.get(&api_deployment).unwrap()["spec"]["replicas"].is_null());

    let api = reconcile_changed(api, |p| p.spec.api.autoscaling = None).await;
    assert!(api.get(HPA).is_none(), "{:?}", lines(&api.calls));
    assert_eq!(api.get(&api_deployment).unwrap()["spec"]["replicas"], 2);
    let calls = lines(&api.calls);
    let replicas_back = calls.iter().position(|c| *c == format!("PATCH {api_deployment}"));
    let deleted = calls.iter().position(|c| *c == format!("DELETE {HPA}"));
    assert!(
        replicas_back < deleted,
        "replicas applied before the autoscaler goes: {calls:?}"
    );
    let delete = api.calls.iter().find(|c| c.method == "DELETE").unwrap();
    assert!(
        delete.body["preconditions"]["uid"]
            .as_str()
            .unwrap()
            .starts_with("uid-"),
        "deletes exactly the object it looked at: {}",
        delete.body
    );
    let event = api
        .calls
        .iter()
        .find(|c| c.path == EVENTS && c.body["reason"] == "Deleted")
        .expect("a Normal event");
    assert!(event.body["note"]
        .as_str()
        .unwrap()
        .contains("spec.api.autoscaling"));

    // Off and already gone: a look, nothing deleted.
    let api = reconcile_changed(api, |_| {}).await;
    assert!(lines(&api.calls).contains(&format!("GET {HPA}")));
    assert!(api.calls.iter().all(|c| c.method != "DELETE"));
}

#[tokio::test]
async fn turning_monitoring_off_deletes_the_service_monitor_and_the_rule() {
    let mut api = cluster();
    api.monitoring = true;
    let api = reconcile_changed(api, |p| {
        p.spec.observability.service_monitor = true;
        p.spec.observability.prometheus_rule = true;
    })
    .await;
    assert!(api.get(SERVICE_MONITOR).is_some() && api.get(PROMETHEUS_RULE).is_some());

    let api = reconcile_changed(api, |p| p.spec.observability.service_monitor = false).await;
    assert!(api.get(SERVICE_MONITOR).is_none());
    assert!(api.get(PROMETHEUS_RULE).is_some(), "the rule is still wanted");

    let api = reconcile_changed(api, |p| p.spec.observability.prometheus_rule = false).await;
    assert!(api.get(PROMETHEUS_RULE).is_none());
}

#[tokio::test]
async fn a_switched_off_object_the_platform_does_not_own_is_left_alone() {
    let mut api = cluster();
    let foreign = serde_json::json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": { "name": "coffer-api", "namespace": "wallet", "uid": "someone-elses",
            "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "Deployment", "name": "x",
                "uid": "uid-other", "controller": true }] },
        "spec": { "scaleTargetRef": { "kind": "Deployment", "name": "coffer-api" }, "maxReplicas": 3 },
    });
    api.objects.insert(HPA.into(), foreign.clone());
    let api = reconcile_changed(api, |_| {}).await;
    assert_eq!(api.get(HPA), Some(&foreign));
    assert!(api.calls.iter().all(|c| c.method != "DELETE"));
}

#[tokio::test]
async fn without_the_prometheus_operator_switched_off_monitoring_is_simply_absent() {
    let api = reconcile_changed(cluster(), |_| {}).await;
    assert!(lines(&api.calls).contains(&format!("GET {SERVICE_MONITOR}")));
    assert!(api.calls.iter().all(|c| c.method != "DELETE"));
}

#[tokio::test]
async fn the_headless_service_of_an_older_operator_is_replaced_by_the_metrics_service() {
    let mut api = cluster();
    let legacy = "/api/v1/namespaces/wallet/services/coffer-workers";
    api.objects.insert(
        legacy.into(),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "coffer-workers", "namespace": "wallet", "uid": "uid-legacy",
                "ownerReferences": [{ "apiVersion": "coffer.dev/v1alpha1", "kind": "WalletPlatform",
                    "name": "coffer", "uid": "uid-platform", "controller": true }] },
            "spec": { "clusterIP": "None", "ports": [{ "name": "metrics", "port": 9090 }] },
        }),
    );
    let api = reconcile_changed(api, |_| {}).await;
    assert!(api.get(legacy).is_none(), "{:?}", lines(&api.calls));
    let metrics = api
        .get("/api/v1/namespaces/wallet/services/coffer-metrics")
        .unwrap();
    assert_eq!(metrics["spec"]["selector"]["coffer.dev/metrics"], "true");
    let api_pods = &api.get(&format!("{DEPLOYMENTS}/coffer-api")).unwrap()["spec"]["template"];
    assert_eq!(api_pods["metadata"]["labels"]["coffer.dev/metrics"], "true");
    let ports = &api_pods["spec"]["containers"][0]["ports"];
    assert_eq!(
        (
            ports[0]["name"].as_str(),
            ports[1]["name"].as_str(),
            ports[1]["containerPort"].as_i64()
        ),
        (Some("http"), Some("metrics"), Some(9090))
    );
    let api_service = api.get("/api/v1/namespaces/wallet/services/coffer-api").unwrap();
    assert_eq!(
        api_service["spec"]["ports"].as_array().unwrap().len(),
        1,
        "http only"
    );
}

const POLICIES: &str = "/apis/networking.k8s.io/v1/namespaces/wallet/networkpolicies";

fn network_policy() -> crate::crd::NetworkPolicySpec {
    serde_json::from_value(serde_json::json!({
        "apiFrom": [{ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "ingress" } } }],
        "metricsFrom": [{ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "monitoring" } } }],
        "mongodb": { "podSelector": { "app.kubernetes.io/name": "mongodb" } },
        "rabbitmq": { "podSelector": { "app.kubernetes.io/name": "rabbitmq" } },
    }))
    .unwrap()
}

fn stored_policies(api: &FakeApi) -> Vec<String> {
    api.objects
        .keys()
        .filter_map(|k| k.strip_prefix(&format!("{POLICIES}/")))
        .map(str::to_string)
        .collect()
}

/// Changes the stored ChainListener `ethereum`.
fn change_listener(api: &mut FakeApi, change: impl FnOnce(&mut crate::crd::ChainListener)) {
    let path = format!("{LISTENERS}/ethereum");
    let mut listener: crate::crd::ChainListener = serde_json::from_value(api.objects[&path].clone()).unwrap();
    change(&mut listener);
    api.put(&listener);
}

#[tokio::test]
async fn network_policies_fence_the_platform_and_switching_them_off_deletes_them() {
    let api = reconcile_changed(cluster(), |p| p.spec.network_policy = Some(network_policy())).await;
    assert_eq!(
        stored_policies(&api),
        [
            "coffer-api",
            "coffer-ingress",
            "coffer-mongodb",
            "coffer-rabbitmq"
        ]
    );
    let calls = lines(&api.calls);
    let fence = calls
        .iter()
        .position(|c| c.starts_with(&format!("PATCH {POLICIES}/")));
    let pods = calls
        .iter()
        .position(|c| c.starts_with(&format!("PATCH {DEPLOYMENTS}/")));
    assert!(fence < pods, "fences before the pods: {calls:?}");
    let mongodb = &api.get(&format!("{POLICIES}/coffer-mongodb")).unwrap()["spec"];
    assert_eq!(
        mongodb["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "coffer",
        "only the platform's pods reach MongoDB: {mongodb}"
    );
    assert_eq!(mongodb["ingress"][0]["ports"][0]["port"], 27017);
    let api_ingress = &api.get(&format!("{POLICIES}/coffer-api")).unwrap()["spec"]["ingress"];
    assert_eq!(api_ingress.as_array().unwrap().len(), 1);
    assert_eq!(api_ingress[0]["ports"][0]["port"], "http");
    assert!(
        stored_policies(&api).iter().all(|p| !p.contains("listener")),
        "the listener has no signer: no egress fence"
    );

    let api = reconcile_changed(api, |p| {
        let mut policy = network_policy();
        policy.rabbitmq = None;
        p.spec.network_policy = Some(policy);
    })
    .await;
    assert_eq!(
        stored_policies(&api),
        ["coffer-api", "coffer-ingress", "coffer-mongodb"]
    );

    let api = reconcile_changed(api, |p| p.spec.network_policy = None).await;
    assert!(stored_policies(&api).is_empty(), "{:?}", lines(&api.calls));
}

#[tokio::test]
async fn a_signer_listener_is_never_started_without_its_egress_fence() {
    let mut api = cluster();
    api.put(&secret("hot-wallet", "key"));
    change_listener(&mut api, |l| {
        l.spec.signer_secret_ref = Some(crate::crd::SecretKeyRef {
            name: "hot-wallet".into(),
            key: None,
        })
    });
    let api = reconcile_changed(api, |p| p.spec.network_policy = Some(network_policy())).await;
    let listener_deployment = format!("{DEPLOYMENTS}/coffer-listener-ethereum");
    assert!(
        api.get(&listener_deployment).is_none(),
        "no hot-wallet pod without its fence"
    );
    assert_degraded(
        status_of(&api, &format!("{LISTENERS}/ethereum")),
        "EgressUndeclared",
        "spec.rpcEgress",
    );

    let mut api = api;
    change_listener(&mut api, |l| {
        l.spec.rpc_egress = vec![serde_json::from_value(serde_json::json!({
            "to": [{ "podSelector": { "matchLabels": { "app.kubernetes.io/name": "anvil" } } }],
            "ports": [{ "protocol": "TCP", "port": 8545 }],
        }))
        .unwrap()]
    });
    let api = reconcile_changed(api, |_| {}).await;
    let fence_path = format!("{POLICIES}/coffer-listener-ethereum-egress");
    let fence = api.get(&fence_path).expect("the fence").clone();
    let egress = fence["spec"]["egress"].as_array().unwrap();
    let destinations: Vec<_> = egress
        .iter()
        .map(|rule| (rule["ports"][0]["port"].clone(), rule["to"][0].clone()))
        .collect();
    assert_eq!(
        destinations.len(),
        3,
        "DNS, MongoDB and the node, nothing else: {egress:?}"
    );
    assert_eq!(destinations[0].0, 53);
    assert_eq!(destinations[1].0, 27017);
    assert_eq!(destinations[2].0, 8545);
    assert_eq!(fence["spec"]["policyTypes"], serde_json::json!(["Egress"]));
    assert_eq!(fence["metadata"]["ownerReferences"][0]["uid"], "uid-listener");
    let calls = lines(&api.calls);
    let fenced = calls.iter().position(|c| *c == format!("PATCH {fence_path}"));
    let started = calls
        .iter()
        .position(|c| *c == format!("PATCH {listener_deployment}"));
    assert!(fenced.is_some() && fenced < started, "{calls:?}");

    // Without its signer the listener needs no fence: the one it had goes.
    let mut api = api;
    change_listener(&mut api, |l| l.spec.signer_secret_ref = None);
    let api = reconcile_changed(api, |_| {}).await;
    assert!(api.get(&fence_path).is_none(), "{:?}", lines(&api.calls));
    assert!(api.get(&listener_deployment).is_some());
}

#[tokio::test]
async fn a_fenced_signer_listener_follows_its_catalog_by_watch_only_when_the_api_server_is_declared() {
    let mut api = cluster();
    api.put(&secret("hot-wallet", "key"));
    change_listener(&mut api, |l| {
        l.spec.signer_secret_ref = Some(crate::crd::SecretKeyRef {
            name: "hot-wallet".into(),
            key: None,
        });
        l.spec.rpc_egress = vec![serde_json::from_value(serde_json::json!({
            "to": [{ "ipBlock": { "cidr": "203.0.113.0/24" } }],
            "ports": [{ "protocol": "TCP", "port": 443 }],
        }))
        .unwrap()];
    });
    let env_of = |api: &FakeApi| -> Vec<String> {
        api.get(&format!("{DEPLOYMENTS}/coffer-listener-ethereum"))
            .unwrap()["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    let fence = |api: &FakeApi| {
        api.get(&format!("{POLICIES}/coffer-listener-ethereum-egress"))
            .unwrap()["spec"]["egress"]
            .as_array()
            .unwrap()
            .len()
    };
    let api = reconcile_changed(api, |p| p.spec.network_policy = Some(network_policy())).await;
    assert!(
        !env_of(&api).contains(&"COFFER_ASSETS_CONFIGMAP".to_string()),
        "fenced off the API server, it reads the mounted file"
    );
    assert_eq!(fence(&api), 3, "DNS, MongoDB, the node");

    let api = reconcile_changed(api, |p| {
        let mut policy = network_policy();
        policy.api_server =
            vec![
                serde_json::from_value(serde_json::json!({ "ipBlock": { "cidr": "172.18.0.2/32" } }))
                    .unwrap(),
            ];
        p.spec.network_policy = Some(policy);
    })
    .await;
    assert!(env_of(&api).contains(&"COFFER_ASSETS_CONFIGMAP".to_string()));
    assert_eq!(fence(&api), 4, "and the API server");
    let api_server_rule = &api
        .get(&format!("{POLICIES}/coffer-listener-ethereum-egress"))
        .unwrap()["spec"]["egress"][2];
    assert_eq!(api_server_rule["ports"][0]["port"], 443);
    assert_eq!(api_server_rule["ports"][1]["port"], 6443);
}

/// Proof of liabilities: the signing key reaches the api and the reconciler from its Secret
/// (never as a literal value), the schedule only the reconciler; a missing Secret is reported.
#[tokio::test]
async fn a_liabilities_key_reaches_the_api_and_reconciler_and_the_schedule_only_the_reconciler() {
    let mut api = cluster();
    let mut platform = platform_in(&api);
    platform.spec.liabilities = Some(crate::crd::LiabilitiesSpec {
        signing_key_secret_ref: crate::crd::SecretKeyRef {
            name: "coffer-liabilities".into(),
            key: None,
        },
        publish_interval_seconds: Some(3600),
    });
    api.put(&platform);
    let stored = platform_in(&api);
    let (_, _, api) = reconcile_once(api, stored).await;
    assert_degraded(status_of(&api, PLATFORM), "SecretMissing", "coffer-liabilities");

    let mut api = api;
    api.put(&secret("coffer-liabilities", "key"));
    let stored = platform_in(&api);
    let (_, _, api) = reconcile_once(api, stored).await;
    let env_of = |name: &str| {
        api.objects[&format!("{DEPLOYMENTS}/{name}")]["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .clone()
    };
    for name in ["coffer-api", "coffer-reconciler"] {
        let env = env_of(name);
        let key = env
            .iter()
            .find(|e| e["name"] == "COFFER_LIABILITY_SIGNING_KEY")
            .unwrap_or_else(|| panic!("{name} has the signing key"));
        assert_eq!(key["valueFrom"]["secretKeyRef"]["name"], "coffer-liabilities");
        assert_eq!(key["valueFrom"]["secretKeyRef"]["key"], "key");
        assert!(key.get("value").is_none(), "never a literal value");
    }
    let schedule = |name: &str| {
        env_of(name)
            .iter()
            .find(|e| e["name"] == "COFFER_LIABILITY_PUBLISH_INTERVAL_SECONDS")
            .map(|e| e["value"].clone())
    };
    assert_eq!(schedule("coffer-reconciler"), Some(serde_json::json!("3600")));
    assert_eq!(schedule("coffer-api"), None);
}
