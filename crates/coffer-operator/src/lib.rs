//! Coffer's Kubernetes operator.
//!
//! - [`crd`]: the `coffer.dev/v1alpha1` resources (`WalletPlatform`, `Asset`, `ChainListener`);
//!   [`crds`] / [`crds_yaml`] give their CustomResourceDefinitions.
//! - [`build`]: pure functions from resources to the objects the operator applies.
//! - [`catalog`]: the services' side of the published asset catalog (a ConfigMap followed
//!   through the API server).
//! - [`controller`]: reconcile (server-side apply, owner references, finalizer, events, status).
//! - [`run`] with [`OperatorArgs`]: the `coffer operator` role (watches, leader election, metrics).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod build;
pub mod catalog;
#[cfg(test)]
mod catalog_tests;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod error;
#[cfg(test)]
mod fake_api;
pub mod leader;
pub mod metrics;
pub mod render;
mod run;
pub mod server;

pub use error::Error;
pub use run::{run, OperatorArgs};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The CustomResourceDefinitions of every Coffer resource, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        crd::WalletPlatform::crd(),
        crd::Asset::crd(),
        crd::ChainListener::crd(),
    ]
}

/// All CRDs as one multi-document YAML (what `coffer crdgen` prints and `crds/coffer.yaml` holds).
/// Keys are sorted, so the output is the same whatever features `serde_json` is built with
/// (`preserve_order` is switched on by other crates of the workspace).
pub fn crds_yaml() -> String {
    crds().iter().map(canonical_yaml).collect()
}

/// One YAML document (`---` first) with sorted keys: stable output for files and golden tests.
pub fn canonical_yaml<T: serde::Serialize>(object: &T) -> String {
    let value = serde_json::to_value(object).expect("Kubernetes objects serialise");
    format!(
        "---\n{}",
        serde_yaml::to_string(&sorted(value)).expect("JSON values serialise to YAML")
    )
}

/// `value` with every object's keys in sorted order.
fn sorted(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// The file [`write_crds`] writes, under `crds/` and `charts/coffer-operator/crds/`.
pub const CRDS_FILE_NAME: &str = "coffer.yaml";

/// Writes [`crds_yaml`] to `dir/coffer.yaml`, creating `dir` if needed.
pub fn write_crds(dir: impl AsRef<std::path::Path>) -> std::io::Result<std::path::PathBuf> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir)?;
    let path = dir.join(CRDS_FILE_NAME);
    std::fs::write(&path, crds_yaml())?;
    Ok(path)
}
