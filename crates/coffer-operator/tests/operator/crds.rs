use crate::{assert_golden, repo_root};

#[test]
fn crds_directory_matches_the_generated_crds() {
    assert_golden(
        &repo_root().join("crds").join(coffer_operator::CRDS_FILE_NAME),
        &coffer_operator::crds_yaml(),
    );
}

#[test]
fn chart_ships_the_same_crds() {
    let chart_crds = repo_root()
        .join("charts/coffer-operator/crds")
        .join(coffer_operator::CRDS_FILE_NAME);
    assert_golden(&chart_crds, &coffer_operator::crds_yaml());
    let entries: Vec<_> = std::fs::read_dir(chart_crds.parent().unwrap()).unwrap().collect();
    assert_eq!(
        entries.len(),
        1,
        "charts/coffer-operator/crds/ holds exactly the generated file"
    );
}

#[test]
fn kustomize_base_ships_the_same_crds() {
    // kustomize refuses files outside a kustomization's directory, so the base holds a copy.
    let base_crds = repo_root()
        .join("deploy/base/crds")
        .join(coffer_operator::CRDS_FILE_NAME);
    assert_golden(&base_crds, &coffer_operator::crds_yaml());
}

#[test]
fn crds_yaml_is_stable() {
    assert_eq!(coffer_operator::crds_yaml(), coffer_operator::crds_yaml());
}

#[test]
fn every_crd_has_conditions_printer_columns_and_a_status_subresource() {
    for crd in coffer_operator::crds() {
        let name = crd.metadata.name.clone().unwrap();
        let version = &crd.spec.versions[0];
        assert_eq!(crd.spec.scope, "Namespaced", "{name}");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}"
        );
        let columns = version.additional_printer_columns.as_ref().unwrap();
        assert!(
            columns.iter().any(|c| c.json_path.contains("Ready")),
            "{name} shows Ready"
        );
        let schema = serde_json::to_value(version.schema.as_ref().unwrap()).unwrap();
        let conditions = &schema["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{name}");
        assert!(
            schema["openAPIV3Schema"]["properties"]["status"]["properties"]["observedGeneration"].is_object()
        );
    }
}

#[test]
fn the_chain_listener_schema_refuses_a_sweep_without_a_signer_and_bounds_the_policy() {
    let crd = coffer_operator::crds()
        .into_iter()
        .find(|crd| crd.spec.names.kind == "ChainListener")
        .unwrap();
    let schema = serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap()).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
    let rules = spec["x-kubernetes-validations"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["rule"] == "!has(self.sweep) || has(self.signerSecretRef)"),
        "{rules:?}"
    );
    let sweep = &spec["properties"]["sweep"];
    assert_eq!(
        sweep["required"],
        serde_json::json!(["depositKeySecretRef", "depositXpub"])
    );
    let field = |name: &str| &sweep["properties"][name];
    assert_eq!(
        (
            field("batchMax")["minimum"].as_f64(),
            field("batchMax")["maximum"].as_f64()
        ),
        (Some(1.0), Some(1000.0))
    );
    assert_eq!(
        (
            field("gasPriceCeilingGwei")["minimum"].as_f64(),
            field("gasPriceCeilingGwei")["maximum"].as_f64()
        ),
        (Some(1.0), Some(10000.0))
    );
    for amount in ["minAmount", "tokenMinAmount"] {
        assert_eq!(
            field(amount)["pattern"],
            r"^[0-9]{1,78}(\.[0-9]{1,78})?$",
            "{amount}"
        );
    }
    assert!(field("depositXpub")["pattern"]
        .as_str()
        .unwrap()
        .starts_with("^[xt]pub"));
}
