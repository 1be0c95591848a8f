//! The WalletPlatform controller. Reconcile is a pipeline: dereference (list the platform's
//! Assets and ChainListeners, read its Secrets) → validate → build (pure, [`crate::build`]) →
//! apply (server-side apply, one field manager) → status (platform, Assets, ChainListeners).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;
use tracing::{info, warn};

use crate::build::{
    build_platform, chain_listener_deployment, chain_listener_deployment_name, listener_egress_policy,
    listener_egress_policy_name, prometheus_rule_resource, select_assets, service_monitor_resource,
    validate_listener, validate_platform, AssetSelection, AssetVerdict, PlatformObjects, Unwanted,
    DEPOSIT_KEY_DEFAULT_KEY, MANAGER,
};
use crate::conditions::{merge, ConditionUpdate};
use crate::crd::condition::{DEGRADED, PROGRESSING, READY};
use crate::crd::{
    Asset, AssetStatus, ChainListener, ChainListenerStatus, SecretKeyRef, WalletPlatform,
    WalletPlatformStatus, API_VERSION,
};
use crate::error::{is_forbidden, is_not_found, Error, Result};
use crate::metrics::Metrics;

/// The finalizer the operator puts on every WalletPlatform.
pub const FINALIZER: &str = "coffer.dev/operator";
/// How often a healthy platform is looked at again without any change.
const RESYNC: Duration = Duration::from_secs(300);
/// Retry delay while a ChainListener waits for its Secret (Secrets are not watched: least privilege).
const LISTENER_RETRY: Duration = Duration::from_secs(30);
const BACKOFF_BASE: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// State shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per platform (`namespace/name`), for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, recorder: Recorder, metrics: Arc<Metrics>) -> Self {
        Context {
            client,
            recorder,
            metrics,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn reset_failures(&self, key: &str) {
        self.failures.lock().expect("failures lock").remove(key);
    }

    /// Records one more failure and returns the delay before the next attempt: 5 s doubling to 5 min.
    fn next_backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("failures lock");
        let count = failures.entry(key.to_string()).or_insert(0);
        *count = count.saturating_add(1);
        let factor = 2u32.saturating_pow(count.saturating_sub(1).min(16));
        BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
    }
}

fn key_of(platform: &WalletPlatform) -> String {
    format!(
        "{}/{}",
        platform.namespace().unwrap_or_default(),
        platform.name_any()
    )
}

/// Reconciles one WalletPlatform: the finalizer wraps [`WalletPlatform::apply_all`] and
/// [`WalletPlatform::cleanup`].
pub async fn reconcile(platform: Arc<WalletPlatform>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciles.inc();
    let _timer = ctx.metrics.duration.start_timer();
    let namespace = platform.namespace().ok_or_else(|| Error::NotNamespaced {
        kind: "WalletPlatform",
        name: platform.name_any(),
    })?;
    let api: Api<WalletPlatform> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = key_of(&platform);
    info!(platform = %key, "reconciling");
    let action = finalizer(&api, FINALIZER, platform, |event| async {
        match event {
            Finalizer::Apply(platform) => platform.apply_all(&ctx).await,
            Finalizer::Cleanup(platform) => platform.cleanup(&ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.reset_failures(&key);
    Ok(action)
}

/// Counts the failure and retries with exponential backoff; never panics, never hot-loops.
pub fn error_policy(platform: Arc<WalletPlatform>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .with_label_values(&[error.metric_label()])
        .inc();
    let delay = ctx.next_backoff(&key_of(&platform));
    warn!(platform = %key_of(&platform), %error, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

/// What the dereference and validation steps found.
struct Observed {
    assets: Vec<Asset>,
    listeners: Vec<ChainListener>,
    selection: AssetSelection,
}

/// What happened to the workloads in this reconcile; drives every status.
#[derive(Clone, Debug)]
enum Outcome {
    /// Applied; `available` when every Deployment has its replicas available.
    Applied {
        available: bool,
        notes: Vec<String>,
    },
    Paused,
    Failed {
        reason: &'static str,
        message: String,
    },
}

/// Verdict on a ChainListener: `Ok` (applied or to apply) or the user error blocking it.
type ListenerVerdicts = BTreeMap<String, std::result::Result<(), Error>>;

impl WalletPlatform {
    fn ns(&self) -> String {
        self.namespace().unwrap_or_default()
    }

    /// The Apply branch of the finalizer: the whole pipeline; failures are reported in status and
    /// Events before being returned to the error policy.
    async fn apply_all(&self, ctx: &Context) -> Result<Action> {
        let observed = self.dereference(ctx).await?;
        let listener_verdicts = self.check_listeners(ctx, &observed.listeners).await?;
        let result = match self.validate(ctx).await {
            Err(error) => Err(error),
            Ok(()) if self.spec.paused => Ok(Outcome::Paused),
            Ok(()) => self.apply_objects(ctx, &observed, &listener_verdicts).await,
        };
        let outcome = match &result {
            Ok(outcome) => outcome.clone(),
            Err(error) => Outcome::Failed {
                reason: error.reason(),
                message: error.to_string(),
            },
        };
        if let Outcome::Failed { reason, message } = &outcome {
            self.publish(ctx, EventType::Warning, reason, "Reconciling", message)
                .await;
        }
        self.report(ctx, &observed, &listener_verdicts, &outcome).await?;
        result?;
        if listener_verdicts.values().any(|v| v.is_err()) {
            return Ok(Action::requeue(LISTENER_RETRY));
        }
        Ok(Action::requeue(RESYNC))
    }

    /// Lists the Assets and ChainListeners of this platform.
    async fn dereference(&self, ctx: &Context) -> Result<Observed> {
        let ns = self.ns();
        let name = self.name_any();
        let assets: Vec<Asset> = Api::<Asset>::namespaced(ctx.client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .map_err(Error::kube("list", "Asset", &ns, "*"))?
            .items
            .into_iter()
            .filter(|a| a.spec.platform_ref == name)
            .collect();
        let listeners: Vec<ChainListener> = Api::<ChainListener>::namespaced(ctx.client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .map_err(Error::kube("list", "ChainListener", &ns, "*"))?
            .items
            .into_iter()
            .filter(|l| l.spec.platform_ref == name)
            .collect();
        let selection = select_assets(&assets);
        Ok(Observed {
            assets,
            listeners,
            selection,
        })
    }

    /// The spec rules and the Secrets every workload needs.
    async fn validate(&self, ctx: &Context) -> Result<()> {
        validate_platform(self).map_err(|message| Error::InvalidSpec {
            namespace: self.ns(),
            name: self.name_any(),
            message,
        })?;
        let referrer = format!("WalletPlatform {}", self.name_any());
        let spec = &self.spec;
        check_secret(ctx, &self.ns(), &spec.mongodb.secret_ref, "uri", &referrer).await?;
        check_secret(ctx, &self.ns(), &spec.rabbitmq.secret_ref, "uri", &referrer).await?;
        check_secret(ctx, &self.ns(), &spec.jwt_secret_ref, "secret", &referrer).await?;
        check_secret(ctx, &self.ns(), &spec.audit_key_secret_ref, "key", &referrer).await?;
        for key in ["key", "index-key"] {
            let pii = SecretKeyRef {
                name: spec.pii_keys_secret_ref.name.clone(),
                key: Some(key.into()),
            };
            check_secret(ctx, &self.ns(), &pii, key, &referrer).await?;
        }
        if let Some(liabilities) = &spec.liabilities {
            let key = &liabilities.signing_key_secret_ref;
            check_secret(ctx, &self.ns(), key, "key", &referrer).await?;
        }
        Ok(())
    }

    async fn check_listeners(&self, ctx: &Context, listeners: &[ChainListener]) -> Result<ListenerVerdicts> {
        let mut verdicts = BTreeMap::new();
        for listener in listeners {
            let referrer = format!("ChainListener {}", listener.name_any());
            let mut verdict = validate_listener(listener).map_err(|message| Error::InvalidListener {
                namespace: self.ns(),
                listener: listener.name_any(),
                message,
            });
            if verdict.is_ok() {
                verdict =
                    check_secret(ctx, &self.ns(), &listener.spec.rpc_secret_ref, "url", &referrer).await;
            }
            if let (Ok(()), Some(signer)) = (&verdict, &listener.spec.signer_secret_ref) {
                verdict = check_secret(ctx, &self.ns(), signer, "key", &referrer).await;
            }
            if let (Ok(()), Some(sweep)) = (&verdict, &listener.spec.sweep) {
                let key = &sweep.deposit_key_secret_ref;
                verdict = check_secret(ctx, &self.ns(), key, DEPOSIT_KEY_DEFAULT_KEY, &referrer).await;
            }
            if verdict.is_ok() {
                // A pod holding the hot wallet's key is never started without its egress fence.
                verdict = listener_egress_policy(self, listener)
                    .map(|_| ())
                    .map_err(|message| Error::EgressUndeclared {
                        namespace: self.ns(),
                        listener: listener.name_any(),
                        message,
                    });
            }
            let verdict = match verdict {
                Err(error) if !error.is_user_error() => return Err(error),
                other => other,
            };
            verdicts.insert(listener.name_any(), verdict);
        }
        Ok(verdicts)
    }

    /// Server-side applies every object; returns whether the workloads are available.
    async fn apply_objects(
        &self,
        ctx: &Context,
        observed: &Observed,
        listener_verdicts: &ListenerVerdicts,
    ) -> Result<Outcome> {
        let running: Vec<ChainListener> = observed
            .listeners
            .iter()
            .filter(|l| matches!(listener_verdicts.get(&l.name_any()), Some(Ok(()))))
            .cloned()
            .collect();
        let objects: PlatformObjects = build_platform(self, &observed.selection, &running);
        let ns = self.ns();
        let client = &ctx.client;
        apply(client, &ns, &objects.assets).await?;
        apply(client, &ns, &objects.service_account).await?;
        apply(client, &ns, &objects.role).await?;
        apply(client, &ns, &objects.role_binding).await?;
        apply(client, &ns, &objects.api_service).await?;
        apply(client, &ns, &objects.metrics_service).await?;
        // Fences before the pods they fence.
        for policy in &objects.network_policies {
            apply(client, &ns, policy).await?;
        }
        let mut available = true;
        for deployment in &objects.deployments {
            available &= is_available(&apply(client, &ns, deployment).await?);
        }
        if let Some(hpa) = &objects.api_autoscaler {
            apply(client, &ns, hpa).await?;
        }
        apply(client, &ns, &objects.api_disruption_budget).await?;
        let mut notes = Vec::new();
        if let Some(monitor) = &objects.service_monitor {
            notes.extend(
                self.apply_monitoring(ctx, monitor, "servicemonitors", service_monitor_resource())
                    .await?,
            );
        }
        if let Some(rule) = &objects.prometheus_rule {
            notes.extend(
                self.apply_monitoring(ctx, rule, "prometheusrules", prometheus_rule_resource())
                    .await?,
            );
        }
        let mut unwanted = objects.unwanted.clone();
        for listener in &observed.listeners {
            if !matches!(listener_verdicts.get(&listener.name_any()), Some(Ok(()))) {
                continue;
            }
            match listener_egress_policy(self, listener) {
                Ok(Some(policy)) => {
                    apply(client, &ns, &policy).await?;
                }
                _ => unwanted.push(Unwanted {
                    kind: "NetworkPolicy",
                    owner_uid: listener.uid(),
                    resource: kube::api::ApiResource::erase::<NetworkPolicy>(&()),
                    name: listener_egress_policy_name(&self.name_any(), &listener.name_any()),
                    why: "the listener has no signer, or the platform no spec.networkPolicy",
                }),
            }
            available &= is_available(&apply(client, &ns, &chain_listener_deployment(self, listener)).await?);
        }
        // After the apply: an API losing its autoscaler has its replica count back first.
        for unwanted in &unwanted {
            self.delete_unwanted(ctx, unwanted).await?;
        }
        Ok(Outcome::Applied { available, notes })
    }

    /// Deletes an object a switch of the spec turned off, if it exists and this platform controls
    /// it (an object of the same name made by someone else is left alone). Its kind not being
    /// served (no Prometheus Operator) counts as absent.
    async fn delete_unwanted(&self, ctx: &Context, unwanted: &Unwanted) -> Result<()> {
        let ns = self.ns();
        let kind = unwanted.kind;
        let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &unwanted.resource);
        let failed = |action| Error::kube(action, kind, &ns, &unwanted.name);
        let Some(existing) = api.get_opt(&unwanted.name).await.map_err(failed("get"))? else {
            return Ok(());
        };
        let owner = unwanted.owner_uid.as_ref().or(self.metadata.uid.as_ref());
        let owned = existing
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == owner);
        if !owned {
            return Ok(());
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: existing.uid(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&unwanted.name, &params).await {
            Ok(_) => {}
            Err(error) if is_not_found(&error) => return Ok(()),
            Err(error) => return Err(failed("delete")(error)),
        }
        info!(platform = %key_of(self), kind, name = unwanted.name, why = unwanted.why, "deleted a switched-off object");
        let note = format!("deleted {kind} {}: {}", unwanted.name, unwanted.why);
        self.publish(ctx, EventType::Normal, "Deleted", "SwitchOff", &note)
            .await;
        Ok(())
    }

    /// Applies a Prometheus Operator object when its CRD is served; otherwise a note for the status.
    async fn apply_monitoring(
        &self,
        ctx: &Context,
        object: &DynamicObject,
        plural: &str,
        resource: kube::api::ApiResource,
    ) -> Result<Option<String>> {
        let served = match ctx
            .client
            .list_api_group_resources("monitoring.coreos.com/v1")
            .await
        {
            Ok(list) => list.resources.iter().any(|r| r.name == plural),
            Err(error) if is_not_found(&error) => false,
            Err(error) => {
                return Err(Error::kube(
                    "discover",
                    "APIGroup",
                    "",
                    "monitoring.coreos.com/v1",
                )(error))
            }
        };
        if !served {
            return Ok(Some(format!(
                "{plural}.monitoring.coreos.com is not installed: skipped"
            )));
        }
        let ns = self.ns();
        let name = object.name_any();
        Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &resource)
            .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(object))
            .await
            .map_err(Error::kube("apply", "MonitoringObject", &ns, &name))?;
        Ok(None)
    }

    /// The Cleanup branch of the finalizer: owned objects go with the platform through their owner
    /// references; the ChainListener Deployments belong to the listeners, so they are removed here,
    /// and the Assets are told they are no longer in use.
    async fn cleanup(&self, ctx: &Context) -> Result<Action> {
        let observed = self.dereference(ctx).await?;
        let ns = self.ns();
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &ns);
        for listener in &observed.listeners {
            let name = chain_listener_deployment_name(&self.name_any(), &listener.name_any());
            match deployments.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(error) if is_not_found(&error) => {}
                Err(error) => return Err(Error::kube("delete", "Deployment", &ns, &name)(error)),
            }
            // Its fence goes after the pod it fenced.
            let fence = listener_egress_policy_name(&self.name_any(), &listener.name_any());
            match policies.delete(&fence, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(error) if is_not_found(&error) => {}
                Err(error) => return Err(Error::kube("delete", "NetworkPolicy", &ns, &fence)(error)),
            }
        }
        let now = now();
        for asset in &observed.assets {
            let updates = [ConditionUpdate::new(
                READY,
                false,
                "PlatformDeleted",
                format!("WalletPlatform {} is being deleted", self.name_any()),
            )];
            let status = asset_status(asset, &updates, false, &now);
            patch_status_if_changed(ctx, &ns, asset, asset.status.as_ref(), status).await?;
        }
        self.publish(
            ctx,
            EventType::Normal,
            "Deleted",
            "Cleanup",
            "chain listeners stopped, assets released",
        )
        .await;
        Ok(Action::await_change())
    }

    /// Writes the platform's, the Assets' and the ChainListeners' statuses (only what changed).
    async fn report(
        &self,
        ctx: &Context,
        observed: &Observed,
        listener_verdicts: &ListenerVerdicts,
        outcome: &Outcome,
    ) -> Result<()> {
        let now = now();
        let ns = self.ns();
        let selection = &observed.selection;
        for asset in &observed.assets {
            let verdict = selection
                .verdicts
                .get(&asset.name_any())
                .cloned()
                .unwrap_or(AssetVerdict::Published);
            let previous_in_use = asset.status.as_ref().is_some_and(|s| s.in_use);
            let (updates, in_use) = asset_updates(&verdict, outcome, previous_in_use);
            let status = asset_status(asset, &updates, in_use, &now);
            patch_status_if_changed(ctx, &ns, asset, asset.status.as_ref(), status).await?;
        }
        for listener in &observed.listeners {
            let verdict = listener_verdicts.get(&listener.name_any());
            let updates = listener_updates(verdict, outcome);
            let existing = listener.status.clone().unwrap_or_default();
            let deployment = matches!(verdict, Some(Ok(())))
                .then(|| chain_listener_deployment_name(&self.name_any(), &listener.name_any()))
                .or(existing.deployment.clone());
            let status = ChainListenerStatus {
                observed_generation: listener.metadata.generation,
                conditions: merge(&existing.conditions, &updates, listener.metadata.generation, &now),
                deployment,
            };
            patch_status_if_changed(ctx, &ns, listener, listener.status.as_ref(), status).await?;
        }
        let existing = self.status.clone().unwrap_or_default();
        let running_listeners = listener_verdicts.values().filter(|v| v.is_ok()).count();
        let status = WalletPlatformStatus {
            observed_generation: self.metadata.generation,
            conditions: merge(
                &existing.conditions,
                &platform_updates(outcome, selection, listener_verdicts),
                self.metadata.generation,
                &now,
            ),
            assets: count(selection.published()),
            invalid_assets: count(selection.refused()),
            chain_listeners: count(running_listeners),
        };
        patch_status_if_changed(ctx, &ns, self, self.status.as_ref(), status).await
    }

    /// Publishes an Event on this platform; a failure to publish is logged, never fatal.
    async fn publish(&self, ctx: &Context, type_: EventType, reason: &str, action: &str, note: &str) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &self.object_ref(&())).await {
            warn!(%error, reason, "failed to publish an Event");
        }
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Reads a Secret and checks the key exists. Never logs or returns the value.
async fn check_secret(
    ctx: &Context,
    ns: &str,
    reference: &SecretKeyRef,
    default_key: &str,
    referrer: &str,
) -> Result<()> {
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(&reference.name)
        .await
        .map_err(|error| match is_forbidden(&error) {
            true => Error::SecretForbidden {
                namespace: ns.into(),
                secret: reference.name.clone(),
                referrer: referrer.into(),
            },
            false => Error::kube("get", "Secret", ns, &reference.name)(error),
        })?
        .ok_or_else(|| Error::SecretMissing {
            namespace: ns.into(),
            secret: reference.name.clone(),
            referrer: referrer.into(),
        })?;
    let key = reference.key_or(default_key);
    let has_key = secret.data.as_ref().is_some_and(|d| d.contains_key(key))
        || secret.string_data.as_ref().is_some_and(|d| d.contains_key(key));
    if !has_key {
        return Err(Error::SecretKeyMissing {
            namespace: ns.into(),
            secret: reference.name.clone(),
            key: key.into(),
            referrer: referrer.into(),
        });
    }
    Ok(())
}

/// Server-side apply under the operator's field manager; returns the object as stored.
async fn apply<K>(client: &Client, ns: &str, object: &K) -> Result<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + Serialize
        + serde::de::DeserializeOwned,
{
    let name = object.name_any();
    Api::<K>::namespaced(client.clone(), ns)
        .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(object))
        .await
        .map_err(Error::kube("apply", kind_of::<K>(), ns, &name))
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    // Kinds are static for k8s-openapi types; leak-free because `kind` returns a Cow of a static str.
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(kind) => kind,
        std::borrow::Cow::Owned(_) => "object",
    }
}

fn is_available(deployment: &Deployment) -> bool {
    let wanted = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = deployment.status.as_ref();
    let available = status.and_then(|s| s.available_replicas).unwrap_or(0);
    let observed = status.and_then(|s| s.observed_generation);
    observed >= deployment.metadata.generation && available >= wanted
}

/// Server-side applies `status` on `object` unless it equals the current one (no write, no event loop).
async fn patch_status_if_changed<K, S>(
    ctx: &Context,
    ns: &str,
    object: &K,
    current: Option<&S>,
    status: S,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    S: Serialize + PartialEq,
{
    if current == Some(&status) {
        return Ok(());
    }
    let name = object.name_any();
    let kind = K::kind(&()).to_string();
    let patch = json!({ "apiVersion": API_VERSION, "kind": kind, "status": status });
    Api::<K>::namespaced(ctx.client.clone(), ns)
        .patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::kube("patch status of", status_kind(&kind), ns, &name))?;
    Ok(())
}

fn status_kind(kind: &str) -> &'static str {
    match kind {
        "WalletPlatform" => "WalletPlatform",
        "Asset" => "Asset",
        "ChainListener" => "ChainListener",
        _ => "object",
    }
}

fn asset_status(asset: &Asset, updates: &[ConditionUpdate], in_use: bool, now: &Time) -> AssetStatus {
    let existing = asset.status.clone().unwrap_or_default();
    AssetStatus {
        observed_generation: asset.metadata.generation,
        conditions: merge(&existing.conditions, updates, asset.metadata.generation, now),
        in_use,
    }
}

/// An Asset's conditions and `inUse` from its verdict and what happened to its platform.
fn asset_updates(
    verdict: &AssetVerdict,
    outcome: &Outcome,
    previous_in_use: bool,
) -> (Vec<ConditionUpdate>, bool) {
    if let Some(reason) = verdict.reason() {
        let message = verdict.message();
        return (
            vec![
                ConditionUpdate::new(READY, false, reason, message.clone()),
                ConditionUpdate::new(PROGRESSING, false, reason, "waiting for the Asset to be fixed"),
                ConditionUpdate::new(DEGRADED, true, reason, message),
            ],
            false,
        );
    }
    let valid = ConditionUpdate::new(DEGRADED, false, "Valid", "the asset passes validation");
    match outcome {
        Outcome::Applied { .. } => (
            vec![
                ConditionUpdate::new(READY, true, "Published", verdict.message()),
                ConditionUpdate::new(PROGRESSING, false, "Published", "in the platform's assets file"),
                valid,
            ],
            true,
        ),
        Outcome::Paused => (
            vec![
                ConditionUpdate::new(
                    PROGRESSING,
                    true,
                    "PlatformPaused",
                    "the platform is paused: changes wait",
                ),
                valid,
            ],
            previous_in_use,
        ),
        Outcome::Failed { reason, message } => (
            vec![
                ConditionUpdate::new(
                    PROGRESSING,
                    true,
                    reason,
                    format!("the platform is degraded: {message}"),
                ),
                valid,
            ],
            previous_in_use,
        ),
    }
}

fn listener_updates(
    verdict: Option<&std::result::Result<(), Error>>,
    outcome: &Outcome,
) -> Vec<ConditionUpdate> {
    if let Some(Err(error)) = verdict {
        let message = error.to_string();
        return vec![
            ConditionUpdate::new(READY, false, error.reason(), message.clone()),
            ConditionUpdate::new(PROGRESSING, false, error.reason(), waiting_for(error)),
            ConditionUpdate::new(DEGRADED, true, error.reason(), message),
        ];
    }
    let fine = ConditionUpdate::new(DEGRADED, false, "AsExpected", "");
    match outcome {
        Outcome::Applied { available: true, .. } => vec![
            ConditionUpdate::new(READY, true, "Available", "the listener's Deployment is available"),
            ConditionUpdate::new(PROGRESSING, false, "Applied", ""),
            fine,
        ],
        Outcome::Applied { available: false, .. } => vec![
            ConditionUpdate::new(
                READY,
                false,
                "Starting",
                "waiting for the platform's Deployments to become available",
            ),
            ConditionUpdate::new(PROGRESSING, true, "RollingOut", ""),
            fine,
        ],
        Outcome::Paused => vec![
            ConditionUpdate::new(PROGRESSING, true, "PlatformPaused", "the platform is paused"),
            fine,
        ],
        Outcome::Failed { reason, message } => {
            vec![
                ConditionUpdate::new(
                    PROGRESSING,
                    true,
                    reason,
                    format!("the platform is degraded: {message}"),
                ),
                fine,
            ]
        }
    }
}

/// What a blocked listener waits for: its Secret, or a fix of its spec.
fn waiting_for(error: &Error) -> &'static str {
    match error {
        Error::SecretMissing { .. } | Error::SecretForbidden { .. } | Error::SecretKeyMissing { .. } => {
            "waiting for the Secret"
        }
        _ => "waiting for the ChainListener to be fixed",
    }
}

fn platform_updates(
    outcome: &Outcome,
    selection: &AssetSelection,
    listeners: &ListenerVerdicts,
) -> Vec<ConditionUpdate> {
    let blocked_listeners = listeners.values().filter(|v| v.is_err()).count();
    let summary = format!(
        "{} assets published, {} refused; {} chain listeners running, {} waiting",
        selection.published(),
        selection.refused(),
        listeners.len() - blocked_listeners,
        blocked_listeners
    );
    match outcome {
        Outcome::Applied { available, notes } => {
            let mut message = summary;
            for note in notes {
                message.push_str("; ");
                message.push_str(note);
            }
            vec![
                if *available {
                    ConditionUpdate::new(READY, true, "Available", message.clone())
                } else {
                    ConditionUpdate::new(
                        READY,
                        false,
                        "Starting",
                        "waiting for Deployments to become available",
                    )
                },
                ConditionUpdate::new(
                    PROGRESSING,
                    !available,
                    if *available { "Applied" } else { "RollingOut" },
                    message,
                ),
                ConditionUpdate::new(DEGRADED, false, "AsExpected", ""),
            ]
        }
        Outcome::Paused => vec![
            ConditionUpdate::new(
                PROGRESSING,
                true,
                "Paused",
                "spec.paused is true: changes are not applied",
            ),
            ConditionUpdate::new(DEGRADED, false, "AsExpected", summary),
        ],
        Outcome::Failed { reason, message } => vec![
            ConditionUpdate::new(READY, false, reason, message.clone()),
            ConditionUpdate::new(PROGRESSING, false, reason, "waiting for the problem to be fixed"),
            ConditionUpdate::new(DEGRADED, true, reason, message.clone()),
        ],
    }
}

#[cfg(test)]
#[path = "controller_tests.rs"]
pub(crate) mod tests;
