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
